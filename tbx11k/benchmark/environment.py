"""The machine a benchmark ran on, with the self-checks of the kernel fallback, the foreach EMA
and the batched loss head on its device."""
import os
import platform
from typing import Dict

import torch
import torch._dynamo

from .batched_loss_check import compare_with_stock_head
from .ema_check import compare_with_mmengine_ema
from .kernel_check import compare_with_kernels


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def environment(device: str) -> Dict:
    import mmengine

    import mmcv
    import mmdet

    from tbx11k.compat import mmcv_cuda_fallback
    env = dict(python=platform.python_version(), torch=torch.__version__,
               torch_cuda=torch.version.cuda, mmcv=mmcv.__version__, mmdet=mmdet.__version__,
               mmengine=mmengine.__version__, device=device, host=platform.node(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               mmcv_compiled_with_cuda=mmcv_cuda_fallback.mmcv_compiled_with_cuda())
    if device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
        env['gpu_count'] = torch.cuda.device_count()
    else:
        env['gpu'] = None
    env['kernels'] = mmcv_cuda_fallback.kernel_report(torch.device(device))
    env['msda_path'] = env['kernels']['ms_deform_attn']
    # the PyTorch fallbacks against the kernels (outputs and gradients), where both run
    try:
        env['fallback_check'] = compare_with_kernels(device)
    except Exception as error:  # noqa: BLE001
        env['fallback_check'] = dict(error=f'{type(error).__name__}: {error}'[:300])
    try:  # ForeachExponentialMovingAverage against mmengine's EMA, on this device
        env['foreach_ema_check'] = compare_with_mmengine_ema(device)
    except Exception as error:  # noqa: BLE001
        env['foreach_ema_check'] = dict(error=f'{type(error).__name__}: {error}'[:300])
    try:  # the default BatchedLossDINOHead against mmdet's DINOHead, on this device
        env['batched_loss_check'] = compare_with_stock_head(device)
    except Exception as error:  # noqa: BLE001
        env['batched_loss_check'] = dict(error=f'{type(error).__name__}: {error}'[:300])
    return env
