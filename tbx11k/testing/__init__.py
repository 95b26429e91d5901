"""Test factories and helpers (as ``mmdet.testing``): never imported by the runtime package.

``from tbx11k.testing import X`` gives the helpers that run the real tools in subprocesses and
compare their results, and the tiny-model factories. The submodules hold the rest:
:mod:`.reliability` (test-only hooks for interrupted and diverging runs; configs import it through
``custom_imports``), :mod:`.reliability_runs` (the reliability tests' runs and comparisons),
:mod:`.slurm` (the local Slurm cluster of the Slurm tests), :mod:`.tools` (loading ``tools/``
scripts as modules, COCO-like checkpoints) and :mod:`.oracle` (registers ``GTOracleDetector``
when imported).
"""
from ._utils import (
                     REPO_ROOT,
                     TINY_1GPU,
                     TINY_2GPU,
                     TINY_EB4,
                     cfg_options,
                     ema_weights,
                     free_port,
                     global_relative_difference,
                     json_entries_as_oriented_jpegs,
                     load_checkpoint,
                     lr_by_step,
                     raw_weights,
                     register_oracle_detector,
                     relative_difference,
                     run,
                     save_jpeg_with_orientation,
                     scalars,
                     train_command,
)
from .models import build_tiny_dino, losses_and_grads, random_batch

__all__ = ['REPO_ROOT', 'TINY_1GPU', 'TINY_2GPU', 'TINY_EB4', 'build_tiny_dino', 'cfg_options',
           'ema_weights',
           'free_port', 'global_relative_difference', 'json_entries_as_oriented_jpegs',
           'load_checkpoint', 'losses_and_grads', 'lr_by_step', 'random_batch', 'raw_weights',
           'register_oracle_detector', 'relative_difference', 'run', 'save_jpeg_with_orientation',
           'scalars', 'train_command']
