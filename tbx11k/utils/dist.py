"""torch.distributed on machines without CUDA (gloo), for the pytorch and slurm launchers."""
import os
import subprocess
from datetime import timedelta

import torch.distributed as dist


def init_cpu_process_group(launcher: str, timeout_s: int = 1800) -> None:
    """Initialise a gloo process group from the launcher's environment.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` first, which fails on a CPU-only
    torch; when a group exists the Runner skips its own initialisation.

    Args:
        launcher (str): 'pytorch' or 'slurm': whose environment variables give the rank,
            the world size and the master address.
        timeout_s (int): The process group's timeout in seconds. Defaults to 1800.
    """
    if launcher == 'slurm':
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ.get('SLURM_STEP_NODELIST') or os.environ['SLURM_NODELIST']
            first = subprocess.run(['scontrol', 'show', 'hostnames', nodes], capture_output=True,
                                   text=True, check=True).stdout.split()[0]
            os.environ['MASTER_ADDR'] = first
        os.environ.setdefault('MASTER_PORT', '29500')
    elif launcher != 'pytorch':
        raise ValueError(f"launcher {launcher!r} is not supported without CUDA (use 'pytorch' "
                         "or 'slurm')")
    dist.init_process_group(backend='gloo', timeout=timedelta(seconds=timeout_s))


def close_process_group() -> None:
    """Leave together and tear gloo/NCCL down before the interpreter does: a rank that exits
    while its peer still writes the last checkpoint can otherwise abort in the process group's
    destructor ("terminate called without an active exception", seen with gloo)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
