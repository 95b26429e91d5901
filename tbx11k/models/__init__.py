from .window_loss_normalization import KINDS, LossCountMismatch, LossWindow, window_reduce_mean
from .window_normalized_dino import WindowNormalizedDINO

__all__ = ['KINDS', 'LossCountMismatch', 'LossWindow', 'WindowNormalizedDINO', 'window_reduce_mean']
