# configs/dino_tbx11k_tiny_1gpu.py + SlowStepsHook (tests/slurm/slow_steps.py; tests/slurm on
# PYTHONPATH): the same weights, optimizer steps stretched by default_hooks.slow.seconds.
_base_ = '../../../configs/dino_tbx11k_tiny_1gpu.py'

custom_imports = dict(imports=['tbx11k', 'slow_steps'], allow_failed_imports=False)
default_hooks = dict(slow=dict(type='SlowStepsHook', seconds=0.0))
