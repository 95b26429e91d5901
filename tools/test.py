"""Test (and evaluate) a detector: mmdet 3.3.0's tools/test.py, same flags, plus TBX11K bits.

    python tools/test.py configs/dino_tbx11k_1gpu.py work_dirs/.../epoch_50.pth
    python tools/test.py CONFIG CKPT --weights raw        # the non-EMA weights of an EMA checkpoint
    python tools/test.py CONFIG CKPT --format-only --test-split   # challenge submission files

Prints the metrics and writes them to WORK_DIR/metrics.json (TBX11KMetric also writes metrics.md
and its plots there).
"""
import argparse
import json
import os
import os.path as osp
import socket
import sys
import warnings
from copy import deepcopy
from typing import NamedTuple, Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this repo's tbx11k
# setuptools deprecates pkg_resources, which mmengine imports to look packages up: a
# warning at every start that no user of these tools can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)

import torch  # noqa: E402
from mmengine import ConfigDict  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from tbx11k.apis.inference import (  # noqa: E402
    EMASettings,
    ema_settings,
    read_checkpoint,
    select_weights,
    young_ema_warning,
)
from tbx11k.engine.exit_codes import EXIT_UNTRUSTED_CHECKPOINT  # noqa: E402
from tbx11k.utils import (  # noqa: E402
    KeyValueDictAction,
    check_classes_fit_the_json,
    check_data_root,
    check_evaluators_read_their_loaders_json,
    check_launcher_environment,
    check_num_classes,
    check_output_paths,
    merge_cli_options,
    metric_configs,
    read_config,
)
from tbx11k.utils.dist import close_process_group  # noqa: E402
from tbx11k.utils.safe_checkpoint import (  # noqa: E402
    UntrustedCheckpointError,
    add_trust_checkpoint_argument,
    apply_trust_option,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where metrics.json and the evaluation files go')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='save painted images under work_dir/timestamp/DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--weights', choices=['ema', 'raw'], default='ema',
                        help='for checkpoints with EMA: evaluate the EMA weights (default) or '
                        'the raw training weights')
    parser.add_argument('--data-root', help="TBX11K root; overrides the config's data_root")
    parser.add_argument('--format-only', action='store_true',
                        help='write the submission files instead of evaluating (no labels '
                        'needed; use with --test-split for the challenge test set)')
    parser.add_argument('--test-split', action='store_true',
                        help='test on annotations/json/all_test.json (the unlabelled test set)')
    parser.add_argument('--classes', nargs='+', metavar='NAME',
                        help='the categories to test on, in the json\'s order (another '
                        'COCO-format data set): every dataset, the evaluators and '
                        "model.bbox_head.num_classes; the same as --cfg-options classes=\"[...]\"")
    parser.add_argument('--cfg-options', nargs='+', action=KeyValueDictAction,
                        help='override settings in the config, key=value (mmengine syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation (mmdet's): the config's tta_model and "
                        'tta_pipeline, by default the prediction on the film and on its '
                        'horizontal flip merged by NMS (IoU 0.5)')
    add_trust_checkpoint_argument(parser)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    apply_trust_option(args)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')  # before building anything
    if args.test_split and not args.format_only:
        parser.error('--test-split: all_test.json has no labels (the challenge server holds '
                     'them), there is nothing to evaluate; add --format-only to write the '
                     'submission files')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


class WeightsToLoad(NamedTuple):
    path: str  # the checkpoint the Runner loads
    description: str  # of the weights, for the log and the report
    state: dict  # their state dict
    warning: Optional[str]  # young_ema_warning: EMA weights that are still mostly their start


def weights_to_load(checkpoint_path: str, weights: str, work_dir: str,
                    ema: Optional[EMASettings] = None) -> WeightsToLoad:
    """The weights to test for ``--weights`` (:class:`WeightsToLoad`); ``ema`` is the config's
    EMA, to say when the EMA weights have had too few updates to mean anything.

    The checkpoint is loaded as mmdet's test.py would (local file or URL); one that is missing or
    unreadable ends the tool with a message. A bare state dict, and the raw weights of an EMA
    checkpoint, are written to WORK_DIR as a checkpoint of the form the Runner (and its EMAHook)
    loads."""
    try:
        checkpoint = read_checkpoint(checkpoint_path)
    except UntrustedCheckpointError as error:
        print(f'error: {error}', file=sys.stderr)
        raise SystemExit(EXIT_UNTRUSTED_CHECKPOINT) from None
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f'error: {error}') from None
    state, description = select_weights(checkpoint, weights)
    warning = young_ema_warning(checkpoint, ema) if weights == 'ema' else None
    if weights == 'ema' or 'ema_state_dict' not in checkpoint:
        # mmengine's EMAHook stores the EMA weights as state_dict (the raw ones in ema_state_dict)
        if set(checkpoint) != {'state_dict'}:
            return WeightsToLoad(checkpoint_path, description, state, warning)
        name = 'weights.pth'  # maybe a bare state dict: the EMAHook needs checkpoint['state_dict']
    else:
        name = 'raw_weights.pth'
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, name)
    tmp = f'{path}.{socket.gethostname()}.{os.getpid()}.tmp'  # each rank (of each node) its own
    torch.save(dict(meta=checkpoint.get('meta', {}), state_dict=state), tmp)
    os.replace(tmp, path)
    return WeightsToLoad(path, description, state, warning)


def check_weights_fit(state: dict, model, checkpoint_path: str, config_path: str) -> None:
    """Refuse a checkpoint whose weights do not fit the model (other classes, other model):
    mmengine loads non-strictly, warns, and the test would evaluate randomly initialised layers."""
    from mmengine.model import is_model_wrapper

    from tbx11k.apis.checkpoint_conversion import weights_misfit
    if is_model_wrapper(model):
        model = model.module
    if model.__class__.__name__ == 'DetTTAModel':  # --tta
        model = model.module
    misfit = weights_misfit(state, model, checkpoint_path, config_path)
    if misfit:
        raise SystemExit(f'error: {misfit}\nTest with the config (classes, '
                         'model.bbox_head.num_classes, model sizes) it was trained with.')


def add_tta(cfg: Config) -> Config:
    """mmdet's default flip test-time augmentation."""
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, we will set it as default.')
        cfg.tta_model = dict(type='DetTTAModel',
                             tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                          max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, we will set it as default.')
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [dict(type='PackDetInputs',
                              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                         'scale_factor', 'flip', 'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def build_config(args: argparse.Namespace) -> Config:
    check_launcher_environment(args.launcher)
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    merge_cli_options(cfg, args.cfg_options, args.data_root, args.classes)
    # the config a training saved in its work dir holds that training's resume state (resume=True
    # after --resume): testing loads the checkpoint given here, never an optimizer state
    cfg.resume = False
    cfg.pop('load_from_if_nothing_to_resume', None)
    metrics = metric_configs(cfg.get('test_evaluator'))
    if args.test_split:
        dataset = cfg.test_dataloader.dataset
        dataset.ann_file = 'annotations/json/all_test.json'
        dataset.pipeline = [t for t in dataset.pipeline if t['type'] != 'LoadAnnotations']
        for metric in metrics:
            metric.ann_file = osp.join(dataset.get('data_root', ''), dataset.ann_file)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_output_paths(cfg.work_dir, args.out)
    num_tbx11k = 0
    for i, metric in enumerate(metrics):  # several metrics must not write the same files
        if args.format_only:
            metric.format_only = True
            metric.setdefault('outfile_prefix',
                              osp.join(cfg.work_dir, f'submission_{i}' if i else 'submission'))
        if metric.get('type') == 'TBX11KMetric':  # its metrics.json/.md and plots
            name = f'tbx11k_metric_{num_tbx11k}' if num_tbx11k else 'tbx11k_metric'
            num_tbx11k += 1
            metric.setdefault('out_dir', cfg.work_dir if len(metrics) == 1 else osp.join(
                cfg.work_dir, name))  # with others: WORK_DIR/metrics.json has every figure
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg = add_tta(cfg)
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    check_data_root(cfg, splits=('test_dataloader', ))
    check_evaluators_read_their_loaders_json(cfg, splits=('test_dataloader', ))
    check_num_classes(cfg, splits=('test_dataloader', ))
    check_classes_fit_the_json(cfg, splits=('test_dataloader', ))
    cfg.load_from, weights, state, weights_warning = weights_to_load(
        args.checkpoint, args.weights, cfg.work_dir, ema_settings(cfg))
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    check_weights_fit(state, runner.model, args.checkpoint, args.config)
    del state
    runner.logger.info(f'Evaluating {args.checkpoint}: {weights}')
    if args.out is not None:  # a .pkl name (checked in parse_args)
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    for metric in runner.test_evaluator.metrics:
        if hasattr(metric, 'weights_tag'):
            metric.weights_tag = weights
    metrics = runner.test()
    writes_own_report = [m.get('type') for m in metric_configs(cfg.test_evaluator)] == [
        'TBX11KMetric']
    if runner.rank == 0 and not writes_own_report:
        out = osp.join(cfg.work_dir, 'metrics.json')
        record = dict(checkpoint=osp.abspath(args.checkpoint), weights=weights,
                      metrics={k: (float(v) if isinstance(v, (int, float)) else v)
                               for k, v in (metrics or {}).items()})
        with open(out + '.tmp', 'w') as f:
            json.dump(record, f, indent=2, default=str)
        os.replace(out + '.tmp', out)
        runner.logger.info(f'Metrics written to {out}')
    if weights_warning:  # last, next to the figures it explains
        runner.logger.warning(f'{args.checkpoint}: {weights_warning}')
    close_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
