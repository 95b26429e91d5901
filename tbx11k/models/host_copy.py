"""Host arrays to the device without making the host wait."""
import numpy as np
import torch
from torch import Tensor


def host_to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """Host array -> device without a host sync (pinned, non-blocking) on CUDA.

    Args:
        array (np.ndarray): The host array.
        device (torch.device): The target device.

    Returns:
        Tensor: The tensor on ``device``.
    """
    tensor = torch.from_numpy(array)
    if device.type == 'cuda':
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
