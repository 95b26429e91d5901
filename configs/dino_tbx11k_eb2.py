# DINO on TBX11K, effective batch 2 (the recipe of dino_tbx11k_1gpu.py / _2gpu.py) on whatever
# the launch gives: 1 GPU x 2 accumulation steps or 2 GPUs x 1. The accumulation steps follow
# from the number of processes (2 / GPUs); any other GPU count is refused (exit 5). Every split
# trains identically (same updates, same LR per optimizer step) and checkpoints move between them.
_base_ = './_base_/dino_tbx11k.py'

optim_wrapper = dict(accumulative_counts='auto')
