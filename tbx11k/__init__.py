"""TBX11K tuberculosis detection with DINO on MMDetection 3.x.

Importing the package registers its datasets, samplers, models, loops, hooks, runner and metrics
into mmdet's registries (configs do it with ``custom_imports``).
"""
from . import utils  # noqa: F401  (first: fixes checkpoint loading on torch >= 2.6)
from . import datasets, engine, evaluation, models  # noqa: F401
from . import visualization  # noqa: F401  (LocalAndTensorboardVisBackend)

__version__ = '0.1.0'
