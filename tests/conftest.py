"""Shared pytest fixtures and the `slow` marker."""
import os

import pytest

# The compile tests check our torch.compile set-up on the CPU, where inductor writes C++ kernels
# and compiles each with g++ (about 290 kernels from a cold cache). Without inductor's SIMD code
# they compile faster (tests/models/test_compiled_dino.py and the compile tests of benchmark and
# count_ops: 458 s instead of 613 s from an empty TORCHINDUCTOR_CACHE_DIR, 2-core machine,
# 2026-12-07) and every assertion (equal losses, gradients and predictions, fused-kernel and
# launch counts) is the same; the GPU compiles Triton kernels, not these.
os.environ.setdefault('TORCHINDUCTOR_VEC_ISA_OK', '0')


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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (SLOW_FIXTURES.intersection(getattr(item, 'fixturenames', ()))
                or item.path.name in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
