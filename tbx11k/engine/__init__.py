from .hooks import CheckpointInterchangeHook, IncompatibleCheckpoint
from .loops import AccumulationEpochBasedTrainLoop, LayoutMismatch, NothingToTrain
from .runner import TBX11KRunner

__all__ = ['AccumulationEpochBasedTrainLoop', 'CheckpointInterchangeHook', 'IncompatibleCheckpoint',
           'LayoutMismatch', 'NothingToTrain', 'TBX11KRunner']
