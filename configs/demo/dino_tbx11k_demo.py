# `make demo` (tools/demo.sh): the tiny 1-GPU config on an easy synthetic TBX11K (256 px films with
# large bright lesions, seen at 128 px), with a schedule that learns to find the lesions in a few
# minutes on a 2-core CPU. The tiny model with a full-width ResNet-18, trained from scratch (no
# ImageNet weights).
_base_ = '../dino_tbx11k_tiny_1gpu.py'

data_root = 'data/tbx11k_demo/'
image_scale = (128, 128)  # every film resized to 128 x 128 (keeping its aspect ratio)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/json/TBX11K_val.json')
test_evaluator = val_evaluator

# a full-width ResNet-18 (the tiny configs' is a quarter as wide, for the tests) without pretrained
# weights: every stage trains, at the full learning rate
model = dict(backbone=dict(base_channels=64, frozen_stages=-1),
             neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0))))

# 20 epochs of the 64-film demo set = 640 optimizer steps; warm-up over the first epoch, LR x0.1
# for the last 3 epochs. Validation once, at the end.
max_epochs = 20
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[17],
         gamma=0.1),
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(max_keep_ckpts=1))
