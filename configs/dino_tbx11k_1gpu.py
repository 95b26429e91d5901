# DINO on TBX11K, 1 GPU: 1 image per step x 2 accumulation steps = effective batch 2.
# Trains identically to dino_tbx11k_2gpu.py (same updates, same LR per optimizer step).
_base_ = './_base_/dino_tbx11k.py'

optim_wrapper = dict(accumulative_counts=2)
