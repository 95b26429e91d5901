"""TBX11K evaluation: the official detection/classification protocol + FROC."""
from .functional import (
                         FROC_FPPI,
                         FastCOCOeval,
                         auc_mann_whitney,
                         binary_stats,
                         froc_at,
                         froc_curve,
                         greedy_match,
                         youden_threshold,
)
from .tbx11k_metric import TBX11KMetric

__all__ = [
    'TBX11KMetric', 'FastCOCOeval', 'FROC_FPPI', 'auc_mann_whitney',
    'binary_stats', 'froc_at', 'froc_curve', 'greedy_match',
    'youden_threshold'
]
