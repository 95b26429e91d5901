"""TBX11K data layer: dataset, validation, synthetic generator, checks."""
from .samplers import AccumulationWindowBatchSampler, GlobalOrderSampler
from .seeded import SeededSampleMixin
from .tbx11k import TBX11KDataset
from .validation import TBX11KDataError, TBX11KMissingFileError

__all__ = ['AccumulationWindowBatchSampler', 'GlobalOrderSampler', 'SeededSampleMixin',
           'TBX11KDataset', 'TBX11KDataError', 'TBX11KMissingFileError']
