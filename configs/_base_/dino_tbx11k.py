# DINO-4scale R50 on TBX11K: everything both training layouts share.
# The 1-GPU and 2-GPU configs differ only in how the effective batch of 2 is split.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'

custom_imports = dict(imports=['tbx11k'], allow_failed_imports=False)
runner_type = 'TBX11KRunner'

# ---- data -----------------------------------------------------------------------------------
dataset_type = 'TBX11KDataset'
data_root = 'data/TBX11K/'
classes = ('ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis')  # the official 2-class setting
effective_batch_size = 2  # images per optimizer step; the launch must give exactly this

# TBX11K images are 512x512. Multi-scale training 480-608 (long edge <= 640) as the community
# DINO recipe; no random crop (it cuts lesions out of small films); test at the top scale.
train_scales = [(640, s) for s in (480, 512, 544, 576, 608)]
test_scale = (640, 608)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

train_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    # the same image pairs in the same optimizer steps for any split of the effective batch
    sampler=dict(_delete_=True, type='GlobalOrderSampler', shuffle=True),
    batch_sampler=dict(_delete_=True, type='AccumulationWindowBatchSampler'),
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/json/TBX11K_train.json',
        data_prefix=dict(img='imgs/'),
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=False),  # keep healthy / sick films: FP control
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/json/TBX11K_val.json',
        data_prefix=dict(img='imgs/'),
        metainfo=dict(classes=classes),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# the TBX11K protocol: COCO AP per class, category-agnostic TB, ALL and TB-only images, FROC,
# image-level TB classification (tbx11k/evaluation)
val_evaluator = dict(
    _delete_=True,
    type='TBX11KMetric',
    ann_file=data_root + 'annotations/json/TBX11K_val.json')
test_evaluator = val_evaluator

# ---- model ----------------------------------------------------------------------------------
model = dict(
    type='WindowNormalizedDINO',
    loss_normalization='window',  # 'micro_batch' = stock mmdet (1 GPU + acc != 2 GPUs)
    # the ImageNet ResNet-50 that 'torchvision://resnet50' names, by its URL: no torchvision
    # package needed; offline, point it at a local file (README, "Fine-tuning")
    backbone=dict(init_cfg=dict(
        type='Pretrained',
        checkpoint='https://download.pytorch.org/models/resnet50-0676ba61.pth')),
    bbox_head=dict(
        # DINOHead with the same losses computed for all decoder layers at once: 35 % fewer ops
        # and 1 host sync instead of ~200 per micro-batch (tools/analysis_tools/count_ops.py);
        # equal losses and gradients (tests/models/test_batched_loss_dino_head.py).
        # model.bbox_head.type=DINOHead gives the stock head back.
        type='BatchedLossDINOHead',
        num_classes=len(classes),
        # alpha 0.25 collapsed to "predict nothing" on TBX11K in the community runs
        loss_cls=dict(alpha=0.75)))

# ---- schedule (counted in optimizer steps by AccumulationEpochBasedTrainLoop) -----------------
max_epochs = 50
train_cfg = dict(type='AccumulationEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
optim_wrapper = dict(
    # backbone x0.1 and clip 0.1 from the base; torch's AdamW (same state, same update) stepping
    # the two learning rates' parameters in two calls instead of one per tensor
    # (tbx11k/engine/optim.py)
    optimizer=dict(type='MergedGroupsAdamW', lr=1e-4, weight_decay=1e-4),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),  # 2 warm-up epochs, stepped per optimizer step
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[30, 40],
         gamma=0.1),
]
# lr 1e-4 is for the effective batch of 2; --auto-scale-lr scales by effective batch / 2
auto_scale_lr = dict(enable=False, base_batch_size=2)

# ---- runtime --------------------------------------------------------------------------------
randomness = dict(seed=2024)  # a fixed seed: both layouts then train identically
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    # CheckpointHook + atomic last_checkpoint, old checkpoints deleted only after the new one
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3,
                    save_best='tbx11k/TB_AP_all', rule='greater'),
    # --show-dir drawings named by their path in the data set (mmdet: basename, which collides)
    visualization=dict(type='TBX11KVisualizationHook'))
custom_hooks = [
    dict(type='CheckpointInterchangeHook'),
    # mmengine's EMA with the update as one multi-tensor lerp (bit-identical weights; a GPU step
    # saves ~330 kernel launches for R50); ema_type='ExponentialMovingAverage' for mmengine's own
    dict(type='EMAHook', ema_type='ForeachExponentialMovingAverage', momentum=0.0002,
         update_buffers=True, priority=49),
    # skip optimizer steps with a non-finite loss/gradient (stop after 3), warn of loss collapse
    dict(type='TrainingHealthHook', max_skipped_steps=3,
         collapse_watch=dict(interval=50, begin=500, patience=3, score_thr=0.05, loss_thr=1.0)),
    # SIGUSR1/SIGTERM: checkpoint at the next optimizer step, exit 75 (resume with --resume)
    dict(type='PreemptionCheckpointHook', signals=('SIGUSR1', 'SIGTERM')),
]
