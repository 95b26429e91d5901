"""Shared pytest fixtures, the `slow` marker and the groups of tests for pytest-xdist."""
import os

import pytest

# The compile tests check our torch.compile set-up on the CPU, where inductor writes C++ kernels
# and compiles each with g++ (a few hundred kernels from a cold cache). Without inductor's SIMD code
# they compile faster (tests/models/test_compiled_dino.py and the compile tests of benchmark and
# count_ops: 458 s instead of 613 s from an empty TORCHINDUCTOR_CACHE_DIR, 2-core machine,
# 2026-12-07) and every assertion (equal losses, gradients and predictions, fused-kernel and
# launch counts) is the same; the GPU compiles Triton kernels, not these.
os.environ.setdefault('TORCHINDUCTOR_VEC_ISA_OK', '0')


def _link_inductor_kernels_with_gold() -> None:
    """g++ links each of those kernels against libtorch; GNU ld takes about 1.9 s a kernel there,
    gold 0.5 s (2-core machine, 2026-12-07). gcc looks for ``ld`` in ``COMPILER_PATH`` first: a
    folder holding ``ld`` -> ``ld.gold`` makes gold link them (where binutils has gold). The
    kernels are the same code; only the linking is faster."""
    import shutil
    import tempfile
    gold = shutil.which('ld.gold')
    if gold and 'COMPILER_PATH' not in os.environ:
        folder = tempfile.mkdtemp(prefix='tbx11k-tests-ld-')
        os.symlink(gold, os.path.join(folder, 'ld'))
        os.environ['COMPILER_PATH'] = folder


_link_inductor_kernels_with_gold()

if os.environ.get('PYTEST_XDIST_WORKER'):
    # `make test` runs 2 pytest-xdist workers: one thread each (and in the tools they start, as
    # tbx11k.testing.run already sets), so that two workers do not share a core's threads.
    for _variable in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ.setdefault(_variable, '1')


@pytest.fixture(scope='session')
def synthetic_tbx11k(tmp_path_factory):
    """A tiny synthetic TBX11K (128 px images, made once per session).

    Returns the generator's summary dict ('root' is the data root). Train:
    16 images (4 health, 4 sick, 8 tb: one box at x=-1, one tb image without
    boxes, both classes); val: 8 images (one sick image byte-identical to a
    train one); test: 4; extra: 4. Tests must not modify it: copy first.
    """
    from tbx11k.datasets.synthetic import make_synthetic_tbx11k
    root = tmp_path_factory.mktemp('synthetic_tbx11k')
    return make_synthetic_tbx11k(
        root,
        num_train=16,
        num_val=8,
        num_test=4,
        num_extra=4,
        seed=0,
        image_size=128)


@pytest.fixture(scope='session')
def synthetic_root(synthetic_tbx11k):
    """pathlib.Path of the session's tiny synthetic TBX11K root."""
    import pathlib
    return pathlib.Path(synthetic_tbx11k['root'])


@pytest.fixture(scope='session')
def training_root(tmp_path_factory):
    """A synthetic TBX11K for training tests: 13 train images (an odd count: the last window is
    padded), mixing healthy/sick films without boxes and TB films with 1 to several boxes."""
    from tbx11k.datasets.synthetic import make_synthetic_tbx11k
    root = tmp_path_factory.mktemp('training_tbx11k')
    make_synthetic_tbx11k(root, num_train=13, num_val=6, num_test=4, num_extra=2, seed=1,
                          image_size=256)
    return str(root)


@pytest.fixture(scope='session')
def small_training_root(tmp_path_factory):
    """The smallest synthetic TBX11K that still exercises every part of the equivalence of
    layouts: 9 train images of 128 px (effective batches 2 and 4 both pad the last window of an
    epoch) with 0, 1, 2, 4 and 5 boxes. For multi-process training tests (4 gloo processes)."""
    from tbx11k.datasets.synthetic import make_synthetic_tbx11k
    root = tmp_path_factory.mktemp('small_training_tbx11k')
    make_synthetic_tbx11k(root, num_train=9, num_val=2, num_test=1, num_extra=0, seed=1,
                          image_size=128)
    return str(root)


# ---- the `slow` marker (pyproject): `make test-quick` runs `pytest -m "not slow"` -------------
# A test that uses one of these fixtures (directly or through another fixture) trains a model or
# launches tools in subprocesses; tests that launch processes themselves carry the mark.
SLOW_FIXTURES = frozenset({
    'reference_run', 'interrupted_run', 'ddp_reference', 'nan_run',  # tests/engine trainings
    'converted_tiny', 'tiny_run', 'trained',  # tests/tools: CLI runs
    'slurm_cluster',  # tests/slurm: jobs on a real (local) Slurm
    'runs',  # tests/engine/test_equivalence.py: the trainings of every split
})
# Modules that are slow as a whole: trainings in module fixtures, torch.compile (inductor's
# C++ kernels), trainings in most tests, the timed benchmark and the demo.
SLOW_MODULES = frozenset({'test_equivalence.py', 'test_slurm_training.py', 'test_compiled_dino.py',
                          'test_schedulers.py', 'test_benchmark.py', 'test_count_ops.py',
                          'test_demo.py'})


def _expensive_fixtures(item) -> set:
    """Keys of the trainings (SLOW_FIXTURES, SLOW_MODULES) that ``item`` uses: the name of a
    session fixture, ``module::name`` of a module fixture, the name of a slow module."""
    keys = set()
    for name in SLOW_FIXTURES.intersection(getattr(item, 'fixturenames', ())):
        definition = item._fixtureinfo.name2fixturedefs[name][-1]
        keys.add(name if definition.scope == 'session' else f'{item.path.name}::{name}')
    if item.path.name in SLOW_MODULES:
        keys.add(item.path.name)
    return keys


def _training_groups(items) -> dict:
    """item -> group name: tests that share a training (directly or through other tests) form one
    group, which one pytest-xdist worker runs whole (the training once)."""
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = {item: sorted(_expensive_fixtures(item)) for item in items}
    for item_keys in keys.values():
        for key in item_keys[1:]:
            parent[root(key)] = root(item_keys[0])
    return {item: root(item_keys[0]) for item, item_keys in keys.items() if item_keys}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    groups = _training_groups(items)
    size, waits_on_slurm = {}, set()
    for item, group in groups.items():
        item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(group))
        size[group] = size.get(group, 0) + 1
        if 'slurm_cluster' in item.fixturenames:
            waits_on_slurm.add(group)
    if getattr(config.option, 'loadgroup', False):  # set in pytest-xdist workers
        _group_node_ids(groups)
    # `make test` (--no-loadscope-reorder): the groups first, the Slurm one before the others (it
    # mostly waits on jobs: the other worker runs the rest meanwhile), then by size; single tests
    # fill in; the order inside a group is kept.
    order = {item: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (item not in groups, groups.get(item) not in waits_on_slurm,
                                 -size.get(groups.get(item), 0), order[item]))


def _group_node_ids(groups) -> None:
    """``--dist loadgroup`` schedules by the ``@group`` suffix of node ids. pytest-xdist 3.8.0
    appends it to ``item._nodeid``, which pytest 9.2 no longer reads (``Node.nodeid`` is
    ``str(item._id)``), so under pytest 9.2 every test would be scheduled alone and a training
    would run on both workers. Remove once pytest-xdist sets the suffix through ``_id``."""
    from _pytest.nodeid import NodeId
    for item, group in groups.items():
        if not item.nodeid.endswith(f'@{group}'):
            item._id = NodeId.parse(f'{item.nodeid}@{group}')
