# dino_tbx11k_2gpu.py shrunk exactly as dino_tbx11k_tiny_1gpu.py: 2 processes x 1 image.
_base_ = './dino_tbx11k_tiny_1gpu.py'

optim_wrapper = dict(accumulative_counts=1)
