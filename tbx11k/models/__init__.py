from .batched_loss_dino_head import BatchedLossDINOHead
from .foreach_ema import ForeachExponentialMovingAverage
from .window_loss_normalization import KINDS, LossCountMismatch, LossWindow, window_reduce_mean
from .window_normalized_dino import WindowNormalizedDINO

__all__ = ['BatchedLossDINOHead', 'ForeachExponentialMovingAverage', 'KINDS', 'LossCountMismatch',
           'LossWindow', 'WindowNormalizedDINO', 'window_reduce_mean']
