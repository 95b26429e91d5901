# dino_tbx11k_1gpu.py shrunk for CPU tests: only sizes change (backbone depth and width, layers,
# queries, image scale, schedule length, data root and loader workers).
_base_ = './dino_tbx11k_1gpu.py'

data_root = 'data/tbx11k_synthetic/'
train_scales = [(160, s) for s in (112, 128, 144)]
test_scale = (160, 128)
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

model = dict(
    num_queries=30,
    # ResNet-18 a quarter as wide (3.3 M parameters in all instead of 14.9 M): half the time of a
    # CPU training step and 54 MB checkpoints instead of 237 MB
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128]),
    encoder=dict(num_layers=1, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256))),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),
    test_cfg=dict(max_per_img=30))

train_dataloader = dict(
    num_workers=0, persistent_workers=False, pin_memory=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/json/TBX11K_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[8, 10],
         gamma=0.1),
]
default_hooks = dict(logger=dict(interval=5))
