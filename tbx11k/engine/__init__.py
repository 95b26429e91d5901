from .hooks import CheckpointInterchangeHook, IncompatibleCheckpoint
from .optim import CUDAFusedOptimWrapperConstructor
from .loops import AccumulationEpochBasedTrainLoop, LayoutMismatch, NothingToTrain
from .runner import TBX11KRunner

__all__ = ['AccumulationEpochBasedTrainLoop', 'CheckpointInterchangeHook',
           'CUDAFusedOptimWrapperConstructor', 'IncompatibleCheckpoint', 'LayoutMismatch',
           'NothingToTrain', 'TBX11KRunner']
