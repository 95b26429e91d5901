# dino_tbx11k_tiny_1gpu.py (the CPU-test sizes) as a recipe of effective batch 4 on any split:
# 1 process x 4 accumulation steps, 2 x 2 or 4 x 1 (accumulation = 4 / processes). Scaled from
# effective batch 2 by the rules of dino_tbx11k_eb8.py: lr x sqrt(4 / 2), the same epochs and
# warm-up epochs, EMA momentum 1 - (1 - 0.0002)^2.
_base_ = './dino_tbx11k_tiny_1gpu.py'

effective_batch_size = 4
base_effective_batch_size = 2  # of the recipe this one is scaled from (lr 1e-4)

optim_wrapper = dict(accumulative_counts='auto', optimizer=dict(
    lr=1e-4 * (effective_batch_size / base_effective_batch_size) ** 0.5))
auto_scale_lr = dict(enable=False, base_batch_size=effective_batch_size)
custom_hooks = [
    dict(type='CheckpointInterchangeHook'),
    dict(type='EMAHook', ema_type='ForeachExponentialMovingAverage',
         momentum=1 - (1 - 0.0002) ** (effective_batch_size / base_effective_batch_size),
         update_buffers=True, priority=49),
    dict(type='TrainingHealthHook', max_skipped_steps=3,
         collapse_watch=dict(interval=50, begin=500, patience=3, score_thr=0.05, loss_thr=1.0)),
    dict(type='PreemptionCheckpointHook', signals=('SIGUSR1', 'SIGTERM')),
]
