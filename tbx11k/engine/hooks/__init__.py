from .atomic_checkpoint import AtomicCheckpointHook, find_resumable_checkpoint
from .checkpoint_interchange import CheckpointInterchangeHook, IncompatibleCheckpoint
from .preemption import PreemptionCheckpointHook
from .training_health import TrainingHealthHook
from .visualization import TBX11KVisualizationHook

__all__ = ['AtomicCheckpointHook', 'CheckpointInterchangeHook', 'IncompatibleCheckpoint',
           'PreemptionCheckpointHook', 'TBX11KVisualizationHook', 'TrainingHealthHook',
           'find_resumable_checkpoint']
