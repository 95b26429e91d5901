# DINO on TBX11K, effective batch 8: 1 GPU x 8 accumulation steps, 2 x 4, 4 x 2 or 8 GPUs x 1 (on
# one node or several). The accumulation steps follow from the number of processes (8 / GPUs);
# a GPU count that does not divide 8 is refused (exit 5). Every split trains identically and
# checkpoints move between them; it is another recipe than effective batch 2 (not the same
# training as dino_tbx11k_eb2.py), derived from it by these rules:
#
# - Learning rate: square-root scaling, lr = 1e-4 * sqrt(8 / 2) = 2e-4 (backbone x0.1 as before).
#   AdamW's step size does not grow with the gradient's scale, and a batch k times larger only
#   cuts the gradient noise k-fold: the SDE analysis of adaptive methods (Malladi et al., NeurIPS
#   2022) gives lr ~ sqrt(batch) for Adam, linear scaling (Goyal et al.) is SGD's rule. DETR-family
#   recipes agree: DINO trains at 1e-4 with batch 16, Deformable DETR at 2e-4 with batch 32; the
#   linear rule would ask 4e-4, above any of them, with the same gradient clip of 0.1.
#   --auto-scale-lr (mmengine's rule: linear in the effective batch) is a no-op for every split
#   of this recipe (base_batch_size=8: its LR is already the LR of effective batch 8). Applied to
#   the batch-2 configs with a larger effective_batch_size it would scale linearly: use this
#   config instead.
# - Schedule: the same 50 epochs, milestones 30 and 40 and 2 warm-up epochs (the same images
#   seen at each point of the schedule); an epoch is 4x fewer optimizer steps, so the LinearLR
#   warm-up (converted to optimizer steps) is 4x fewer steps from the same start factor.
# - EMA: momentum per optimizer step 1 - (1 - 0.0002)^4 ~ 0.0008, the same averaging horizon in
#   images (epochs) as batch 2 with 4x fewer updates.
_base_ = './_base_/dino_tbx11k.py'

effective_batch_size = 8
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
