"""How a launch splits the effective batch: processes x images per micro-batch x accumulation.

A config states ``effective_batch_size = E`` (images per optimizer step) and either a fixed
``optim_wrapper.accumulative_counts`` (then it runs on exactly one number of processes) or
``accumulative_counts='auto'``: the accumulation steps then follow from the launch,
``E / (world_size x train_dataloader.batch_size)``, and any world size that makes this a whole
number runs the same training. :class:`~tbx11k.engine.loops.AccumulationEpochBasedTrainLoop`
resolves ``'auto'`` when the runner builds it (mmengine builds the train loop before the optim
wrapper, so the wrapper is built with the resolved count); a launch that fits no split is refused
with :class:`LayoutMismatch` (``tools/train.py`` exits 5) before any training step. Launchers
(``tools/slurm_submit.py``) ask :func:`accepted_world_sizes` which GPU counts a config takes.
"""
import os
from typing import List, Mapping, Optional, Union

#: ``optim_wrapper.accumulative_counts`` value that derives the accumulation from the world size
AUTO = 'auto'
#: where each tools/train.py launcher (``--launcher``) finds the number of processes and the rank
LAUNCHER_WORLD = {'pytorch': ('WORLD_SIZE', 'RANK'), 'slurm': ('SLURM_NTASKS', 'SLURM_PROCID'),
                  'mpi': ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK')}


class LayoutMismatch(ValueError):
    """The launch does not give the effective batch the config was written for."""


def fitting_world_sizes(effective_batch_size: int, batch_size: int = 1) -> List[int]:
    """The numbers of processes that can split ``effective_batch_size`` into whole accumulation
    steps of ``batch_size`` images per process (ascending; empty if ``batch_size`` does not divide
    it).

    Args:
        effective_batch_size (int): images per optimizer step over all processes.
        batch_size (int): images per micro-batch per process (``train_dataloader.batch_size``).
    """
    if effective_batch_size < 1 or batch_size < 1 or effective_batch_size % batch_size:
        return []
    per_image = effective_batch_size // batch_size
    return [w for w in range(1, per_image + 1) if per_image % w == 0]


def describe_world_sizes(effective_batch_size: int, batch_size: int = 1) -> str:
    """``'1, 2, 4 or 8 processes (GPUs) with 8, 4, 2, 1 accumulation steps'`` for a refusal."""
    sizes = fitting_world_sizes(effective_batch_size, batch_size)
    if not sizes:
        return (f'none: effective_batch_size={effective_batch_size} is not a multiple of '
                f'train_dataloader.batch_size={batch_size}')
    accumulation = [effective_batch_size // (w * batch_size) for w in sizes]

    def listed(values: List[int]) -> str:
        text = [str(v) for v in values]
        return text[0] if len(text) == 1 else ', '.join(text[:-1]) + ' or ' + text[-1]

    return (f'{listed(sizes)} processes (GPUs) with {", ".join(map(str, accumulation))} '
            'accumulation steps')


def is_auto(accumulative_counts: Union[int, str, None]) -> bool:
    """Whether ``optim_wrapper.accumulative_counts`` leaves the accumulation to the launch."""
    return isinstance(accumulative_counts, str) and accumulative_counts.strip().lower() == AUTO


def resolve_accumulative_counts(accumulative_counts: Union[int, str, None],
                                effective_batch_size: Optional[int], world_size: int,
                                batch_size: int) -> int:
    """The accumulation steps of this launch; refuses a launch that cannot give the declared
    effective batch.

    Args:
        accumulative_counts: ``optim_wrapper.accumulative_counts`` of the config: a whole number,
            ``'auto'`` or None (1).
        effective_batch_size: the config's ``effective_batch_size`` (None: not declared, any
            launch is accepted with a fixed count; ``'auto'`` then has nothing to derive from).
        world_size (int): processes of this launch.
        batch_size (int): images per micro-batch per process.

    Returns:
        int: the accumulation steps, ``effective_batch_size / (world_size x batch_size)`` for
        ``'auto'``.

    Raises:
        LayoutMismatch: the count is not a whole number >= 1, ``'auto'`` without a declared
            effective batch, or a launch whose ``world_size x batch_size x accumulation`` is
            not the declared effective batch; the message names the world sizes that fit.
    """
    if is_auto(accumulative_counts):
        if effective_batch_size is None:
            raise LayoutMismatch(
                "optim_wrapper.accumulative_counts='auto' derives the accumulation steps from "
                'effective_batch_size, which the config does not set: add effective_batch_size '
                '(images per optimizer step) or give a whole number of accumulation steps')
        per_micro_batch = world_size * batch_size
        if effective_batch_size % per_micro_batch:
            raise LayoutMismatch(
                f'This config trains with an effective batch of {effective_batch_size} images per '
                f'optimizer step (effective_batch_size={effective_batch_size}, '
                f"optim_wrapper.accumulative_counts='auto'); {world_size} process(es) x "
                f'{batch_size} image cannot split it into whole accumulation steps. World sizes '
                f'that fit: {describe_world_sizes(effective_batch_size, batch_size)}. Launch with '
                'one of them, or choose a config of another effective batch (another recipe: '
                'see its learning rate).')
        return effective_batch_size // per_micro_batch
    counts = 1 if accumulative_counts is None else accumulative_counts
    if isinstance(counts, bool) or not isinstance(counts, int) or counts < 1:
        raise LayoutMismatch(f'optim_wrapper.accumulative_counts={counts!r}: it must be a whole '
                             f"number >= 1 or '{AUTO}' (from effective_batch_size and the number "
                             'of GPUs)')
    given = world_size * batch_size * counts
    if effective_batch_size is not None and given != effective_batch_size:
        raise LayoutMismatch(
            f'This config trains with an effective batch of {effective_batch_size} images per '
            f'optimizer step, but this launch gives {given} = {world_size} GPU x {batch_size} '
            f'image x {counts} accumulation steps. World sizes that fit effective_batch_size='
            f'{effective_batch_size}: {describe_world_sizes(effective_batch_size, batch_size)}; '
            f"with --cfg-options optim_wrapper.accumulative_counts='{AUTO}' the config takes any "
            'of them (or set accumulative_counts, and effective_batch_size for another recipe).')
    return counts


def accepted_world_sizes(cfg: Mapping) -> Optional[List[int]]:
    """The numbers of processes (GPUs) a training config can be launched with, for launchers.

    Args:
        cfg: a tools/train.py config (after ``--cfg-options``).

    Returns:
        list[int] | None: ascending world sizes; a config with a fixed
        ``optim_wrapper.accumulative_counts`` takes one (or none, if its numbers contradict
        each other); None when the config declares no ``effective_batch_size`` and fixes the
        accumulation (any world size runs, the effective batch follows from it).
    """
    effective = cfg.get('effective_batch_size')
    counts = (cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1)
    batch_size = int((cfg.get('train_dataloader') or {}).get('batch_size', 1))
    if effective is None:
        return None if not is_auto(counts) else []
    if is_auto(counts):
        return fitting_world_sizes(int(effective), batch_size)
    per_process = batch_size * int(counts)
    return [effective // per_process] if effective % per_process == 0 else []


def launch_world_size(launcher: str, environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The number of processes of a tools/train.py launch, from its launcher's environment,
    before any process group exists (mmengine's Slurm launcher also takes ``SLURM_NTASKS``).

    Args:
        launcher (str): ``--launcher``: ``none``, ``pytorch``, ``slurm`` or ``mpi``.
        environ: the environment (default: ``os.environ``).

    Returns:
        int | None: 1 for ``none``; None when the environment does not say.
    """
    environ = os.environ if environ is None else environ
    if launcher == 'none':
        return 1
    variable = LAUNCHER_WORLD.get(launcher, (None, None))[0]
    value = environ.get(variable or '', '')
    return int(value) if value.isdigit() and int(value) >= 1 else None


def launch_rank(launcher: str, environ: Optional[Mapping[str, str]] = None) -> int:
    """This process's global rank under ``launcher`` (0 when not known)."""
    environ = os.environ if environ is None else environ
    value = environ.get(LAUNCHER_WORLD.get(launcher, (None, ''))[1] or '', '0')
    return int(value) if value.isdigit() else 0


def check_launch(cfg: Mapping, world_size: int) -> Optional[int]:
    """The accumulation steps a config trains with on ``world_size`` processes, checked before
    anything is built; the train loop checks the same again when the runner builds it.

    Args:
        cfg: a tools/train.py config (after ``--cfg-options``).
        world_size (int): processes of the launch.

    Returns:
        int | None: the accumulation steps; None when the config does not train with
        ``AccumulationEpochBasedTrainLoop`` or its batch size is not a whole number (the loop
        reports that).

    Raises:
        LayoutMismatch: as :func:`resolve_accumulative_counts`.
    """
    if (cfg.get('train_cfg') or {}).get('type') != 'AccumulationEpochBasedTrainLoop':
        return None
    batch_size = (cfg.get('train_dataloader') or {}).get('batch_size', 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        return None
    return resolve_accumulative_counts((cfg.get('optim_wrapper') or {}).get('accumulative_counts'),
                                       cfg.get('effective_batch_size'), world_size, batch_size)
