"""Train a detector: mmdet 3.3.0's tools/train.py, with the same flags, plus --data-root.

    python tools/train.py configs/dino_tbx11k_1gpu.py [--work-dir DIR] [--resume [CKPT]]
    python tools/train.py configs/dino_tbx11k_1gpu.py --backbone-checkpoint resnet50-0676ba61.pth
    bash tools/dist_train.sh configs/dino_tbx11k_2gpu.py 2
"""
import argparse
import os
import os.path as osp
import signal
import sys
import time
import warnings


class EarlySignalRecorder:
    """Records SIGUSR1/SIGTERM that arrive while the run starts (imports, building, loading).

    Installed before anything heavy is imported: until ``PreemptionCheckpointHook`` takes the
    signals over in ``before_run`` (it adopts what was recorded here, then stops the run before
    its first step with status 75), a Slurm time-limit or preemption signal would otherwise kill
    the process by its default action, and a job chain would end instead of requeueing.
    """

    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.received = []  # (signal name, time) in arrival order
        self.signals = tuple(signals)
        for signum in self.signals:
            signal.signal(signum, self)

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if any(seen == name for seen, _ in self.received):
            # the same signal twice while starting (a hung start-up, an impatient user): its
            # default action, so a stuck process can still be terminated without SIGKILL
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received.append((name, time.time()))
        os.write(2, f'{name} received while starting: training will stop before its first '
                    'step (exit 75; send it again to stop at once)\n'.encode())

    def restore_defaults(self) -> None:
        for signum in self.signals:
            if signal.getsignal(signum) is self:
                signal.signal(signum, signal.SIG_DFL)


EARLY_SIGNALS = EarlySignalRecorder() if __name__ == '__main__' else None

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this repo's tbx11k
# setuptools deprecates pkg_resources, which mmengine imports to look packages up: a
# warning at every start that no user of these tools can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)

from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from tbx11k.compat.torch_load import load_checkpoint_mmapped  # noqa: E402
from tbx11k.engine import IncompatibleCheckpoint, LayoutMismatch, NothingToTrain  # noqa: E402
from tbx11k.engine.exit_codes import (  # noqa: E402
    EXIT_DIVERGED,
    EXIT_INCOMPATIBLE_CHECKPOINT,
    EXIT_NOTHING_TO_TRAIN,
    EXIT_PRETRAINED_UNAVAILABLE,
    EXIT_UNTRUSTED_CHECKPOINT,
    EXIT_WRONG_LAYOUT,
)
from tbx11k.engine.layout import check_launch, launch_rank, launch_world_size  # noqa: E402
from tbx11k.engine.stopping import NonFiniteTraining, stop_request  # noqa: E402
from tbx11k.utils import (  # noqa: E402
    KeyValueDictAction,
    check_amp_device,
    check_classes_fit_the_json,
    check_data_root,
    check_evaluators_read_their_loaders_json,
    check_launcher_environment,
    check_num_classes,
    check_output_paths,
    merge_cli_options,
    read_config,
)
from tbx11k.utils.cli import configs_for_layout  # noqa: E402
from tbx11k.utils.dist import close_process_group  # noqa: E402
from tbx11k.utils.pretrained import (  # noqa: E402
    BACKBONE_CHECKPOINT_KEY,
    PretrainedWeightsUnavailable,
    check_pretrained_weights,
    pretrained_checkpoints,
)
from tbx11k.utils.safe_checkpoint import (  # noqa: E402
    UntrustedCheckpointError,
    add_trust_checkpoint_argument,
    apply_trust_option,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR (by the effective batch)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a path from the latest checkpoint '
                        'in the work directory')
    parser.add_argument('--data-root', help='TBX11K root (holds imgs/ and annotations/); '
                        "overrides the config's data_root everywhere")
    parser.add_argument('--backbone-checkpoint', metavar='PATH',
                        help='initialise the backbone from this local file instead of '
                        "downloading the config's (offline machines); the same as --cfg-options "
                        f'{BACKBONE_CHECKPOINT_KEY}=PATH')
    parser.add_argument('--classes', nargs='+', metavar='NAME',
                        help='the categories to train on, in the json\'s order (another '
                        'COCO-format data set): every dataset, the evaluators and '
                        "model.bbox_head.num_classes; the same as --cfg-options classes=\"[...]\"")
    parser.add_argument('--cfg-options', nargs='+', action=KeyValueDictAction,
                        help='override settings in the config, key=value (mmengine syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    add_trust_checkpoint_argument(parser)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    apply_trust_option(args)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def refuse_unloadable_checkpoint(path: str, what: str) -> None:
    """Exit with a one-line error when the local checkpoint ``path`` is missing or does not load
    (empty, truncated, not a torch file; mmengine would fail later with a bare traceback), and
    with status 7 when it holds Python objects besides weights and training state (refused
    before anything in it runs, before the model is built). The tensors are mmapped, not read."""
    path = osp.expanduser(path)  # as mmengine's loader does
    if not osp.isfile(path):
        raise SystemExit(f'error: {what}: no such checkpoint file')
    try:
        load_checkpoint_mmapped(path)
    except UntrustedCheckpointError as error:
        print(f'error: {what}: {error}', file=sys.stderr)
        write_exit_status(EXIT_UNTRUSTED_CHECKPOINT)  # every rank refuses: dist_train.sh says 7
        raise SystemExit(EXIT_UNTRUSTED_CHECKPOINT) from None
    except Exception as error:  # unpickling, zip, EOF: all mean the file is unusable
        raise SystemExit(f'error: {what}: cannot load it ({type(error).__name__}: {error}); a '
                         'truncated file, or not a torch checkpoint') from error


def build_config(args: argparse.Namespace) -> Config:
    check_launcher_environment(args.launcher)
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    # where the config's own pretrained weights come from, for the advice when a local copy given
    # on the command line is missing
    args.pretrained_sources = dict(pretrained_checkpoints(cfg.get('model')))
    merge_cli_options(cfg, args.cfg_options, args.data_root, args.classes)
    if args.backbone_checkpoint is not None:
        set_backbone_checkpoint(cfg, args.backbone_checkpoint)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_output_paths(cfg.work_dir)
    if args.amp:
        check_amp_device()
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit('error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the '
                             'config')
        cfg.auto_scale_lr.enable = True
    load_from = cfg.get('load_from')
    if load_from and '://' not in load_from:
        refuse_unloadable_checkpoint(load_from, f'load_from={load_from}')
    if args.resume == 'auto':
        cfg.resume = True
        # mmdet drops load_from here, and tools/slurm_train.sh always passes --resume: a
        # fine-tuning run submitted to Slurm trained from scratch. The weights are loaded when
        # the work dir has nothing to resume yet (TBX11KRunner.load_or_resume).
        cfg.load_from_if_nothing_to_resume = load_from
        cfg.load_from = None
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise SystemExit(f'error: --resume {args.resume}: no such checkpoint file (--resume '
                             'without a path resumes the latest checkpoint of the work dir)')
        if '://' not in args.resume:
            refuse_unloadable_checkpoint(args.resume, f'--resume {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def set_backbone_checkpoint(cfg: Config, path: str) -> None:
    """``--backbone-checkpoint PATH``: the backbone's ``init_cfg`` loads ``PATH``."""
    backbone = cfg.get('model', {}).get('backbone')
    if not isinstance(backbone, dict):
        raise SystemExit('error: --backbone-checkpoint: the config\'s model has no backbone')
    init_cfg = backbone.get('init_cfg')
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        init_cfg.checkpoint = path  # keeps its other fields (e.g. prefix)
    else:
        backbone.init_cfg = dict(type='Pretrained', checkpoint=path)


def check_pretrained_weights_or_exit(cfg: Config, sources: dict) -> None:
    """Exit with :data:`EXIT_PRETRAINED_UNAVAILABLE` and one line saying what to do when the
    weights an ``init_cfg`` names cannot be had; before anything is built."""
    try:
        check_pretrained_weights(cfg.get('model'), sources)
    except PretrainedWeightsUnavailable as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        write_exit_status(EXIT_PRETRAINED_UNAVAILABLE)  # for dist_train.sh, as every outcome
        raise SystemExit(EXIT_PRETRAINED_UNAVAILABLE) from None


def check_layout(cfg: Config) -> int:
    """``EXIT_WRONG_LAYOUT`` (after saying why, once) when the launch's number of processes cannot
    give the config's effective batch, before the process group, model and data are built (the
    train loop checks again for runners built elsewhere); 0 otherwise."""
    world_size = launch_world_size(cfg.launcher)
    if world_size is None:
        return 0
    try:
        check_launch(cfg, world_size)
    except LayoutMismatch as error:
        if launch_rank(cfg.launcher) == 0:
            print(f'error: {error}{configs_for_this_launch(cfg, world_size)}', file=sys.stderr)
        return EXIT_WRONG_LAYOUT
    return 0


def configs_for_this_launch(cfg: Config, world_size: int) -> str:
    """`` Configs for N processes: A (or B, C).`` naming the repository's configs of the same
    effective batch that take ``world_size`` processes (closest name first), or ''."""
    declared = cfg.get('effective_batch_size')
    if declared is None:
        return ''
    fitting = configs_for_layout(declared, world_size, like=getattr(cfg, 'filename', None))
    if not fitting:
        return ''
    others = f' (or {", ".join(fitting[1:3])})' if len(fitting) > 1 else ''
    processes = f'{world_size} process{"es" if world_size > 1 else ""}'
    return f' Configs for {processes}: {fitting[0]}{others}.'


def run_training(runner) -> int:
    """Train; the exit status of the outcomes a job script acts on (the same on every rank)."""
    try:
        runner.train()
    except NothingToTrain as error:
        runner.logger.error(str(error))
        return EXIT_NOTHING_TO_TRAIN
    except IncompatibleCheckpoint as error:
        runner.logger.error(f'Cannot resume: {error}')
        return EXIT_INCOMPATIBLE_CHECKPOINT
    except LayoutMismatch as error:
        runner.logger.error(str(error))
        return EXIT_WRONG_LAYOUT
    except NonFiniteTraining as error:
        runner.logger.error(f'Training stopped: {error}')
        return EXIT_DIVERGED
    except UntrustedCheckpointError as error:  # auto-resumed, a URL, the backbone's init_cfg
        runner.logger.error(str(error))
        return EXIT_UNTRUSTED_CHECKPOINT
    stopped = stop_request(runner)  # a hook stopped the run early (preemption, divergence)
    if stopped is not None:
        runner.logger.warning(stopped.reason)
        return stopped.exit_code
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    status = check_layout(cfg)
    if status:
        write_exit_status(status)
        return status
    check_data_root(cfg)
    check_evaluators_read_their_loaders_json(cfg, splits=('val_dataloader', ))
    check_num_classes(cfg)
    check_classes_fit_the_json(cfg)
    check_pretrained_weights_or_exit(cfg, getattr(args, 'pretrained_sources', {}))
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    status = run_training(runner)
    close_process_group()
    if EARLY_SIGNALS is not None:
        EARLY_SIGNALS.restore_defaults()
    write_exit_status(status)
    return status


def write_exit_status(status: int) -> None:
    """Leave this rank's exit status where ``tools/dist_train.sh`` looks for it.

    ``torch.distributed.run`` exits 1 whenever a worker exits non-zero, so the launcher alone
    cannot tell a preempted run (75) from a crash; dist_train.sh sets ``TBX11K_EXIT_STATUS_DIR``
    and exits with the status all ranks agree on. Nothing is written for a crash.
    """
    directory = os.environ.get('TBX11K_EXIT_STATUS_DIR')
    if directory and osp.isdir(directory):
        rank = os.environ.get('RANK', os.environ.get('LOCAL_RANK', '0'))
        with open(osp.join(directory, f'rank{rank}'), 'w') as f:
            f.write(f'{status}\n')


if __name__ == '__main__':
    sys.exit(main())
