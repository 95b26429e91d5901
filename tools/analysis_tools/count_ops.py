"""Dispatched aten ops and host syncs of one training micro-batch of a config, per phase (CPU).

    python tools/analysis_tools/count_ops.py configs/dino_tbx11k_1gpu.py
    python tools/analysis_tools/count_ops.py configs/dino_tbx11k_1gpu.py --stock  # stock DINO
    python tools/analysis_tools/count_ops.py configs/dino_tbx11k_1gpu.py \\
        --cfg-options model.bbox_head.type=DINOHead --num-images 2 --json ops.json

Builds the config's model (backbone init_cfg removed: no download), takes --num-images training
samples with at least --min-boxes boxes (from a synthetic TBX11K made in a temporary folder, or
--data-root), runs model.loss + parse_losses + backward once to warm up and once counted, and
prints the aten ops per phase (backbone, neck, encoder, decoder, head_loss, other, parse,
backward) and the ops that make the host wait for a GPU (``.item()``-like reads, nonzero/unique,
``.cpu()``, tensors made from host data). A load-independent measurement of host overhead: on a
GPU every dispatched op costs host time and every sync drains the queue. Counted on the CPU (the
CPU paths of MSDA and focal loss: the same op counts as on a GPU up to those two ops' internals).
See tbx11k/benchmark/op_count.py.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys
import tempfile
import warnings

if __name__ == '__main__':
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # count on the CPU, before torch loads
# this repo's tbx11k: tools/<folder>/<tool>.py is three levels below the repo root
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
# setuptools deprecates pkg_resources, which mmengine imports to look packages up: a
# warning at every start that no user of these tools can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)


def parse_args(argv=None) -> argparse.Namespace:
    from tbx11k.utils import KeyValueDictAction
    p = argparse.ArgumentParser(description='Count aten ops and host syncs of one micro-batch')
    p.add_argument('config', help='training config')
    p.add_argument('--cfg-options', nargs='+', action=KeyValueDictAction, default={},
                   help="override config settings, e.g. model.bbox_head.type=DINOHead "
                   "(mmdet's head)")
    p.add_argument('--stock', action='store_true',
                   help="count stock mmdet DINO (the benchmark's baseline) instead of the config's "
                   'model')
    p.add_argument('--num-images', type=int, default=1, help='images in the micro-batch')
    p.add_argument('--min-boxes', type=int, default=2, help='GT boxes each image must have')
    p.add_argument('--data-root', help='TBX11K root (default: a synthetic one, made here)')
    p.add_argument('--seed', type=int, default=0, help='seed of the pipeline and the model')
    p.add_argument('--where', action='store_true', help='also list where the syncs happen')
    p.add_argument('--launches', action='store_true',
                   help='count kernel launches a GPU would see instead (profiler; also for '
                   'model.torch_compile=True; the deformable attention counted as mmcv\'s CUDA '
                   'kernel)')
    p.add_argument('--json', help='write the counts to this JSON file')
    return p.parse_args(argv)


def pick_samples(dataset, num_images: int, min_boxes: int) -> list:
    samples = []
    for index in range(len(dataset)):
        sample = dataset[index]
        if len(sample['data_samples'].gt_instances) >= min_boxes:
            samples.append(sample)
            if len(samples) == num_images:
                return samples
    raise SystemExit(f'error: the training set has fewer than {num_images} images with '
                     f'>= {min_boxes} boxes')


def build(args, data_root: str):
    """(config, model, preprocessed data) for ``args``."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import set_random_seed

    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules

    import tbx11k  # noqa: F401  (registers the project's modules)
    from tbx11k.utils import set_data_root

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    if args.stock:
        from tbx11k.benchmark.cases import to_stock_mmdet
        to_stock_mmdet(cfg)
    if cfg.model.get('torch_compile') and not args.launches:
        print('aten op counts are of eager code: model.torch_compile ignored (use --launches)',
              file=sys.stderr)
        cfg.model.torch_compile = None
    register_all_modules(init_default_scope=True)
    cfg.model.backbone.init_cfg = None
    set_data_root(cfg, data_root)
    set_random_seed(args.seed)
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools' loading chatter (--stock)
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        samples = pick_samples(dataset, args.num_images, args.min_boxes)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(pseudo_collate(samples), True)
    return cfg, model, data


def measure(args, model, data, passes: int, counted):
    """``counted(model, data)`` ``passes`` times (the first ones warm up: lazy initialisation,
    compilation), each from zeroed gradients and the same seed (the denoising noise); returns
    the header fields of a report and the last pass's result."""
    import torch
    for _ in range(passes):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(args.seed)
        result = counted(model, data)
    header = dict(config=args.config,
                  cfg_options={k: str(v) for k, v in args.cfg_options.items()},
                  model=type(model).__name__,
                  num_gts=[len(s.gt_instances) for s in data['data_samples']],
                  img_shapes=[list(s.metainfo['img_shape']) for s in data['data_samples']])
    return header, result


def count_launches(args, data_root: str) -> dict:
    """Kernel launches of one micro-batch (see ``tbx11k.benchmark.op_count.count_launches``)."""
    import torch
    import torch._inductor.config

    from tbx11k.benchmark.op_count import count_launches as count_micro_batch_launches
    from tbx11k.models.compiled_dino import make_attention_traceable

    torch._inductor.config.cpp.enable_kernel_profile = True  # fused kernels in the profile
    _, model, data = build(args, data_root)
    for part in ('encoder', 'decoder'):  # bit-identical; its core then shows as one op
        make_attention_traceable(getattr(model, part))
    header, launches = measure(args, model, data, 3, count_micro_batch_launches)
    return dict(header, stock=args.stock, launches=launches)


def format_launches(report: dict) -> str:
    n = report['launches']
    return '\n'.join([
        f"{report['config']}: {'stock mmdet ' if report['stock'] else ''}{report['model']}"
        f"{' ' + str(report['cfg_options']) if report['cfg_options'] else ''}, "
        f"{len(report['num_gts'])} image(s), GT boxes {report['num_gts']}, "
        f"img_shape {report['img_shapes']}",
        f"kernel launches per micro-batch (estimate): {n['total']}",
        f"  eager aten ops            {n['eager_ops']:>6}",
        f"  compiled code: aten ops   {n['compiled_region_ops']:>6}  (convolutions, matmuls)",
        f"  compiled code: fused      {n['fused_kernels']:>6}",
        f"  deformable attention      {n['msda_kernels']:>6}  (as mmcv's CUDA kernel)",
        "(the deformable attention modules run without mmcv's shape assert here, stock too)"])


def count(args, data_root: str) -> dict:
    from tbx11k.benchmark.op_count import count_micro_batch

    cfg, model, data = build(args, data_root)
    header, counter = measure(args, model, data, 2,
                              lambda m, d: count_micro_batch(m, d, where=args.where))
    head = getattr(model, 'bbox_head', None)
    report = dict(header, head=type(head).__name__ if head is not None else None,
                  **counter.summary(), optimizer_step=count_optimizer_step(cfg, model))
    if args.where:
        report['sync_sites'] = dict(counter.where_counts.most_common())
    return report


def count_optimizer_step(cfg, model) -> dict:
    """Aten ops of one step of the config's optimizer over ``model``'s gradients, run as on a GPU:
    multi-tensor (foreach), torch's default there, unless the config names ``fused``/``foreach``.
    (A non-fused Adam's per-parameter step counters live on the host: their reads are among the
    ops, not the launching ones.)"""
    import copy
    import logging

    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from tbx11k.benchmark.op_count import OpCounter
    from tbx11k.utils import current_logger_level

    optim_cfg = copy.deepcopy(cfg.optim_wrapper.to_dict())
    optim_cfg.pop('_scope_', None)
    optimizer_cfg = optim_cfg['optimizer']
    if 'fused' not in optimizer_cfg and 'foreach' not in optimizer_cfg:
        optimizer_cfg['foreach'] = True
    # paramwise_cfg's per-tensor report, frozen-BN warnings
    with current_logger_level(logging.ERROR), DefaultScope.overwrite_default_scope('mmdet'):
        optimizer = build_optim_wrapper(model, optim_cfg).optimizer
    optimizer.step()  # the state is created lazily in the first step
    counter = OpCounter()
    with counter:
        optimizer.step()
    return dict(optimizer=type(optimizer).__name__, param_groups=len(optimizer.param_groups),
                parameters=sum(len(g['params']) for g in optimizer.param_groups),
                ops=counter.total_ops(), launching_ops=counter.total_launching_ops())


def format_report(report: dict) -> str:
    kinds = list(report['total_syncs'])
    lines = [f"{report['config']}: {report['model']} / {report['head']}, "
             f"{len(report['num_gts'])} image(s), GT boxes {report['num_gts']}, "
             f"img_shape {report['img_shapes']}",
             f"{'phase':<11}{'aten ops':>9}" + ''.join(f'{k:>21}' for k in kinds) +
             f"{'syncs':>7}"]
    for phase, ops in report['ops'].items():
        syncs = report['syncs'][phase]
        lines.append(f'{phase:<11}{ops:>9}' + ''.join(f'{syncs[k]:>21}' for k in kinds) +
                     f'{sum(syncs.values()):>7}')
    total = report['total_syncs']
    lines.append(f"{'total':<11}{report['total_ops']:>9}" +
                 ''.join(f'{total[k]:>21}' for k in kinds) + f'{sum(total.values()):>7}')
    lines.append(f"linear_sum_assignment calls: {report['linear_sum_assignment']}")
    step = report['optimizer_step']
    lines.append(f"optimizer step ({step['optimizer']}, {step['param_groups']} param groups, "
                 f"{step['parameters']} tensors, as on a GPU): {step['ops']} aten ops, "
                 f"{step['launching_ops']} launching kernels")
    for site, n in report.get('sync_sites', {}).items():
        lines.append(f'{n:>5}  {site}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.logging import MMLogger
    MMLogger.get_instance('count_ops', log_level='WARNING')  # no init_weights chatter
    with tempfile.TemporaryDirectory(prefix='count_ops_') as tmp:
        data_root = args.data_root
        if data_root is None:
            from tbx11k.datasets.synthetic import make_synthetic_tbx11k
            data_root = osp.join(tmp, 'tbx11k')
            make_synthetic_tbx11k(data_root, num_train=max(16, 8 * args.num_images), num_val=2,
                                  num_test=1, num_extra=0, seed=args.seed)
        report = (count_launches if args.launches else count)(args, data_root)
    print((format_launches if args.launches else format_report)(report))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
