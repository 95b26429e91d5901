from .hooks import CheckpointInterchangeHook, IncompatibleCheckpoint
from .loops import AccumulationEpochBasedTrainLoop, NothingToTrain
from .runner import TBX11KRunner

__all__ = ['AccumulationEpochBasedTrainLoop', 'CheckpointInterchangeHook', 'IncompatibleCheckpoint',
           'NothingToTrain', 'TBX11KRunner']
