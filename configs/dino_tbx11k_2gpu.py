# DINO on TBX11K, 2 GPUs (DDP): 1 image per GPU, no accumulation = effective batch 2.
# Trains identically to dino_tbx11k_1gpu.py (same updates, same LR per optimizer step).
_base_ = './_base_/dino_tbx11k.py'

optim_wrapper = dict(accumulative_counts=1)
