from .hooks import CheckpointInterchangeHook, IncompatibleCheckpoint
from .layout import AUTO, LayoutMismatch, accepted_world_sizes, fitting_world_sizes
from .loops import AccumulationEpochBasedTrainLoop, NothingToTrain
from .optim import CUDAFusedOptimWrapperConstructor
from .runner import TBX11KRunner

__all__ = ['AUTO', 'AccumulationEpochBasedTrainLoop', 'CheckpointInterchangeHook',
           'CUDAFusedOptimWrapperConstructor', 'IncompatibleCheckpoint', 'LayoutMismatch',
           'NothingToTrain', 'TBX11KRunner', 'accepted_world_sizes', 'fitting_world_sizes']
