"""TBX11K tuberculosis detection with DINO on MMDetection 3.x.

Importing the package applies its upstream patches (:func:`tbx11k.compat.install`) and registers
its datasets, samplers, models, loops, hooks, runner and metrics into mmdet's registries (configs
do it with ``custom_imports``).
"""
from . import compat

compat.install()  # first: checkpoint loading on torch >= 2.6, atomic writes, mmcv kernel fallback

# registers the components (visualization: LocalAndTensorboardVisBackend)
from . import datasets, engine, evaluation, models, visualization  # noqa: E402, F401

__version__ = '0.1.0'
