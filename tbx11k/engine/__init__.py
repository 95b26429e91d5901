from .hooks import CheckpointInterchangeHook, IncompatibleCheckpoint
from .loops import AccumulationEpochBasedTrainLoop, LayoutMismatch, NothingToTrain
from .optim import CUDAFusedOptimWrapperConstructor
from .runner import TBX11KRunner

__all__ = ['AccumulationEpochBasedTrainLoop', 'CheckpointInterchangeHook',
           'CUDAFusedOptimWrapperConstructor', 'IncompatibleCheckpoint', 'LayoutMismatch',
           'NothingToTrain', 'TBX11KRunner']
