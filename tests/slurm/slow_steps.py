"""Test-only hook: sleep after every optimizer step.

The Slurm tests need runs that last longer than a signal's round trip or a 1-minute time limit
without burning the CI machine's 2 cores: ``--cfg-options custom_imports.imports=[tbx11k,slow_steps]
default_hooks.slow.type=SlowStepsHook default_hooks.slow.seconds=S`` (this directory on PYTHONPATH).
Sleeping changes no number: the weights are those of the same run without it.
"""
import os
import time

from mmengine.hooks import Hook

from mmdet.registry import HOOKS


@HOOKS.register_module()
class SlowStepsHook(Hook):
    priority = 'VERY_LOW'  # after the step's own hooks, before PreemptionCheckpointHook (LOWEST)

    def __init__(self, seconds: float = 1.0, first_session_only: bool = False) -> None:
        self.seconds = float(seconds)
        # only in a job's first session (SLURM_RESTART_COUNT unset or 0): requeued ones run at
        # full speed, so a time-limit test is cut once and then finishes quickly
        self.first_session_only = bool(first_session_only)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.first_session_only and int(os.environ.get('SLURM_RESTART_COUNT') or 0) > 0:
            return
        time.sleep(self.seconds)
