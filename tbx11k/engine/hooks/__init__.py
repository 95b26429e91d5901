from .checkpoint_interchange import CheckpointInterchangeHook, IncompatibleCheckpoint

__all__ = ['CheckpointInterchangeHook', 'IncompatibleCheckpoint']
