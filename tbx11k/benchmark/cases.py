"""Benchmark cases: the configs they run (ours and stock mmdet), the speed-up variants, the plan."""
import contextlib
import copy
import os.path as osp
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

#: the speed targets (one H100, configs/dino_tbx11k_1gpu.py)
TARGETS = dict(train_img_per_s=25.0, accumulation_overhead=1.1, infer_img_per_s=60.0)


TRAIN_ANN = 'annotations/json/TBX11K_train.json'


AMP_DTYPES = ('float16', 'bfloat16')


class BenchmarkDone(Exception):
    """Raised by the timing hook to end a run after the timed steps."""


@dataclass
class CaseResult:
    """Figures of one timed case (train or inference)."""
    name: str
    kind: str  # 'train' | 'infer' | 'profile'
    implementation: str  # 'ours' | 'stock'
    config: str
    batch_size: int
    accumulative_counts: int
    images_per_step: int  # images per optimizer step (train) or per batch (infer)
    warmup: int
    steps: int
    amp: Optional[str] = None
    variant: Optional[str] = None
    baseline: Optional[str] = None  # variants: the case they are compared with
    diagnostic: bool = False  # a measurement aid, not a configuration to train with
    status: str = 'ok'  # 'ok' | 'error: ...' | 'skipped: ...'
    seconds: float = 0.0  # wall time of the timed steps
    img_per_s: float = 0.0
    s_per_step: float = 0.0  # per optimizer step (train) or batch (infer), mean
    s_per_step_median: float = 0.0
    s_per_micro_batch: float = 0.0
    s_per_image: float = 0.0
    cpu_s_per_step: float = 0.0  # CPU time of this process (all its threads) per step
    peak_mem_mib: float = 0.0
    peak_mem_kind: str = ''
    step_times: List[float] = field(default_factory=list)
    compiles_in_timed_steps: int = 0  # torch.compile graphs made after the warm-up (in the time)
    # img/s over the timed steps in which torch.compile made no graph (= img_per_s when none did):
    # what a long training runs at once every size has been seen; compiling_steps: the others
    steady_img_per_s: Optional[float] = None
    compiling_steps: int = 0
    # train: the logged loss of each warm-up optimizer step (ours: the window's mean; stock: its
    # last micro-batch's, normalised per micro-batch: not comparable with ours)
    warmup_losses: List[float] = field(default_factory=list)
    profile: Optional[Dict] = None  # kind 'profile': torch.profiler summary per micro-batch
    # model.torch_compile cases: compiled graphs inductor ran without CUDA graphs although the
    # mode asked for them (its 'cudagraph_skips' counter; on a CPU it may count every graph), and
    # the distinct messages of its CUDA-graph log (skip reasons, warnings such as many sizes)
    cudagraph_skips: int = 0
    cudagraph_skip_reasons: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 'ok'


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def prepare_data(root: str, num_images: int, image_size: int, seed: int = 0) -> str:
    """A synthetic TBX11K under ``root`` (made unless its train json is already there)."""
    if osp.isfile(osp.join(root, TRAIN_ANN)):
        return root
    from tbx11k.datasets.synthetic import make_synthetic_tbx11k
    make_synthetic_tbx11k(root, num_train=num_images, num_val=2, num_test=1, num_extra=0,
                          seed=seed, image_size=image_size, overwrite=True)
    return root


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
def _set_amp(cfg, amp: Optional[str]) -> None:
    if not amp:
        return
    if amp not in AMP_DTYPES:
        raise ValueError(f'amp must be one of {AMP_DTYPES}, got {amp!r}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.optim_wrapper.dtype = amp


def one_process_accumulation(cfg) -> int:
    """The config's accumulation steps on one process (the benchmark's launch):
    ``accumulative_counts='auto'`` takes the whole effective batch."""
    from tbx11k.engine.layout import is_auto, resolve_accumulative_counts
    counts = cfg.optim_wrapper.get('accumulative_counts', 1)
    if not is_auto(counts):
        return int(counts)
    return resolve_accumulative_counts(counts, cfg.get('effective_batch_size'), 1,
                                       int(cfg.train_dataloader.batch_size))


def benchmark_config(config: str, data_root: str, work_dir: str, *, stock: bool = False,
                     batch_size: Optional[int] = None, accumulative_counts: Optional[int] = None,
                     amp: Optional[str] = None, cfg_options: Optional[Dict] = None,
                     edit: Optional[Callable] = None, name: str = 'bench',
                     test_batch_size: Optional[int] = None):
    """The Config of one case: ``config`` (+ ``cfg_options``) made quiet and pointed at the data;
    with ``stock=True`` turned into stock mmdet DINO (see the module docstring)."""
    from mmengine.config import Config

    from tbx11k.utils import set_data_root

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    set_data_root(cfg, data_root)
    cfg.work_dir = work_dir
    cfg.experiment_name = name
    cfg.log_level = 'WARNING'  # (known noise is filtered by build_runner)
    cfg.launcher = 'none'
    cfg.load_from = None
    cfg.resume = False
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = None
    cfg.default_hooks.pop('visualization', None)  # val/test only
    if cfg.get('visualizer'):  # nothing is logged; no TensorBoard needed on the GPU machine
        cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
        # a name of its own: mmengine keeps one visualizer per name per process, and mmdet's
        # 'visualizer' would make a later runner of the process write into this case's
        # (deleted) temporary folder, or this case into an earlier runner's
        cfg.visualizer.name = f'tbx11k_benchmark:{work_dir}'
    # inference: the train images through the test pipeline (enough of them; kept aside)
    test_loader = copy.deepcopy(cfg.get('test_dataloader') or cfg.val_dataloader)
    test_loader.dataset.ann_file = TRAIN_ANN
    test_loader.dataset.pop('tb_only', None)
    if test_batch_size is not None:
        test_loader.batch_size = test_batch_size
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    cfg.benchmark_test_dataloader = test_loader
    cfg.model.backbone.init_cfg = None  # no download; the speed does not depend on the weights
    cfg.train_cfg.max_epochs = 10 ** 6  # the timing hook ends the run
    cfg.train_cfg.val_interval = 10 ** 6
    if batch_size is not None:
        cfg.train_dataloader.batch_size = batch_size
    if accumulative_counts is not None:
        cfg.optim_wrapper.accumulative_counts = accumulative_counts
    acc = cfg.optim_wrapper.accumulative_counts = one_process_accumulation(cfg)
    if 'effective_batch_size' in cfg:
        cfg.effective_batch_size = int(cfg.train_dataloader.batch_size) * acc
    _set_amp(cfg, amp)
    if edit is not None:
        edit(cfg)
    if stock:
        to_stock_mmdet(cfg)
    return cfg


def to_stock_mmdet(cfg) -> None:
    """Replace tbx11k's components of ``cfg`` by stock mmdet 3.3.0 / mmengine ones (in place)."""
    cfg.model.type = 'DINO'
    cfg.model.pop('loss_normalization', None)
    cfg.model.pop('verify_loss_counts', None)
    cfg.model.pop('torch_compile', None)
    if cfg.model.get('bbox_head', {}).get('type') == 'BatchedLossDINOHead':
        cfg.model.bbox_head.type = 'DINOHead'
    cfg.pop('runner_type', None)
    cfg.pop('effective_batch_size', None)
    cfg.custom_hooks = []
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=cfg.train_cfg.max_epochs,
                         val_interval=cfg.train_cfg.val_interval)
    loader = cfg.train_dataloader
    loader.sampler = dict(type='DefaultSampler', shuffle=True)
    loader.batch_sampler = dict(type='AspectRatioBatchSampler')
    datasets = [loader.dataset]
    if 'benchmark_test_dataloader' in cfg:
        datasets.append(cfg.benchmark_test_dataloader.dataset)
    for dataset in datasets:
        dataset.type = 'CocoDataset'
        for key in ('tb_only', 'validate'):
            dataset.pop(key, None)
    if cfg.optim_wrapper.get('constructor') == 'CUDAFusedOptimWrapperConstructor':
        cfg.optim_wrapper.pop('constructor')
    _per_group_optimizer(cfg)


# --------------------------------------------------------------------------------------------
# variants: each speed-up on its own (ours, batch 1 x acc 2)
# --------------------------------------------------------------------------------------------
def _fused(cfg) -> None:
    cfg.optim_wrapper.constructor = 'CUDAFusedOptimWrapperConstructor'


def _per_group_optimizer(cfg) -> None:
    """torch's optimizer for a ``MergedGroups*`` one (one update per param group, i.e. per
    tensor under mmengine's paramwise_cfg, as stock mmdet)."""
    from tbx11k.engine.optim import torch_optimizer_type
    optimizer = cfg.optim_wrapper.get('optimizer', {})
    if isinstance(optimizer.get('type'), str):
        optimizer.type = torch_optimizer_type(optimizer.type)


def _no_verify(cfg) -> None:
    cfg.model.verify_loss_counts = False


def _no_custom_hooks(cfg) -> None:
    cfg.custom_hooks = []


def _per_tensor_ema(cfg) -> None:
    for hook in cfg.custom_hooks:
        if hook.get('type') == 'EMAHook':
            hook['ema_type'] = 'ExponentialMovingAverage'


def _stock_loss_head(cfg) -> None:
    cfg.model.bbox_head.type = 'DINOHead'


def _torch_compile(cfg) -> None:
    cfg.model.torch_compile = True


def _torch_compile_transformer(cfg) -> None:
    cfg.model.torch_compile = dict(parts=['encoder', 'decoder'])


def _torch_compile_cudagraphs(cfg) -> None:
    cfg.model.torch_compile = dict(mode='reduce-overhead')


def _pad_denoising_queries(cfg) -> None:
    cfg.model.pad_denoising_queries = True


def _torch_compile_dynamic(cfg) -> None:
    cfg.model.torch_compile = dict(dynamic=True)


#: extra warm-up steps of the torch.compile variants: each part recompiles a few times for the
#: sizes that vary (image scale, denoising queries; the losses up to 5 versions: static, dynamic,
#: one box, no box, another batch size)
COMPILE_WARMUP = 8


def _cudnn_benchmark(cfg) -> None:
    cfg.env_cfg.cudnn_benchmark = True


@dataclass
class Variant:
    """A speed-up switch measured on its own against ours (same batch / accumulation)."""
    name: str
    description: str
    edit: Optional[Callable] = None
    amp: Optional[str] = None
    kernels: str = 'auto'  # 'off': mmcv's CUDA kernels switched off during the case
    kind: str = 'train'  # 'infer': timed as inference (batch --infer-batch-size)
    extra_warmup: int = 0  # more warm-up steps (torch.compile: recompiles for new sizes)
    needs_cuda: bool = False
    diagnostic: bool = False


def _compose(*edits):
    def edit(cfg):
        for e in edits:
            e(cfg)
    return edit


#: the switches that leave the numerics alone up to float rounding ('safe_all')
_safe_all = _compose(_fused, _no_verify, _cudnn_benchmark)


VARIANTS: Dict[str, Variant] = {v.name: v for v in [
    Variant('fused_adamw', "optim_wrapper.constructor='CUDAFusedOptimWrapperConstructor' "
            '(AdamW fused=True)', _fused, needs_cuda=True),
    Variant('no_verify_loss_counts', 'model.verify_loss_counts=False (no count check reads)',
            _no_verify),
    Variant('per_group_optimizer', "diagnostic: ours with torch's AdamW stepping mmengine's "
            'per-tensor param groups one by one (instead of MergedGroupsAdamW): its cost',
            _per_group_optimizer, diagnostic=True),
    Variant('per_tensor_ema', "diagnostic: ours with mmengine's EMA (one lerp_ per tensor) instead "
            'of the default ForeachExponentialMovingAverage', _per_tensor_ema, diagnostic=True),
    Variant('cudnn_benchmark', 'env_cfg.cudnn_benchmark=True (5 fixed training shapes)',
            _cudnn_benchmark, needs_cuda=True),
    Variant('amp_fp16', 'AmpOptimWrapper fp16, dynamic loss scale (tools/train.py --amp)',
            amp='float16', needs_cuda=True),
    Variant('amp_bf16', "AmpOptimWrapper dtype='bfloat16'", amp='bfloat16', needs_cuda=True),
    Variant('no_mmcv_kernels', 'TBX11K_MMCV_KERNELS=off: PyTorch MSDA and focal loss, as on a '
            'GPU without mmcv CUDA kernels (what the kernels bring)', kernels='off',
            needs_cuda=True, diagnostic=True),
    Variant('no_custom_hooks', 'diagnostic: ours without custom_hooks (EMA, health, preemption, '
            'checkpoint interchange): their cost', _no_custom_hooks, diagnostic=True),
    Variant('stock_loss_head', "diagnostic: ours with model.bbox_head.type='DINOHead' (mmdet's "
            'layer-by-layer losses instead of the default BatchedLossDINOHead): what batching '
            'the losses saves', _stock_loss_head, diagnostic=True),
    Variant('torch_compile', 'model.torch_compile=True: backbone, neck, encoder, proposals, '
            'decoder, head branches, losses torch.compile-d (inductor; MSDA as a custom op)',
            _torch_compile, extra_warmup=COMPILE_WARMUP),
    Variant('torch_compile_transformer', "model.torch_compile=dict(parts=['encoder', 'decoder'])",
            _torch_compile_transformer, extra_warmup=COMPILE_WARMUP),
    Variant('torch_compile_cudagraphs', "model.torch_compile=dict(mode='reduce-overhead'): "
            'compiled and replayed as CUDA graphs', _torch_compile_cudagraphs, needs_cuda=True,
            extra_warmup=COMPILE_WARMUP),
    Variant('torch_compile_cudagraphs_padded', 'torch_compile_cudagraphs with '
            'model.pad_denoising_queries=True: one decoder and head-branch shape (and CUDA graph) '
            'per image size instead of one per (image size, denoising-query count)',
            _compose(_torch_compile_cudagraphs, _pad_denoising_queries), needs_cuda=True,
            extra_warmup=COMPILE_WARMUP),
    Variant('torch_compile_padded', 'torch_compile with model.pad_denoising_queries=True',
            _compose(_torch_compile, _pad_denoising_queries), extra_warmup=COMPILE_WARMUP),
    Variant('pad_denoising_queries', 'model.pad_denoising_queries=True in eager: what computing '
            'the padded decoder rows costs', _pad_denoising_queries),
    Variant('torch_compile_dynamic', 'model.torch_compile=dict(dynamic=True): every part '
            'compiled once with dynamic sizes (no static first version, fewer recompiles)',
            _torch_compile_dynamic, extra_warmup=COMPILE_WARMUP),
    Variant('torch_compile_infer', 'inference with model.torch_compile=True (batch '
            '--infer-batch-size)', _torch_compile, kind='infer',
            extra_warmup=COMPILE_WARMUP),
    Variant('safe_all_compiled', 'safe_all + torch_compile',
            _compose(_safe_all, _torch_compile), needs_cuda=True,
            extra_warmup=COMPILE_WARMUP),
    Variant('safe_all_cudagraphs_padded', 'safe_all + torch_compile_cudagraphs_padded: the '
            'candidate for the 1-GPU config if compiling pays',
            _compose(_safe_all, _torch_compile_cudagraphs, _pad_denoising_queries),
            needs_cuda=True, extra_warmup=COMPILE_WARMUP),
    Variant('safe_all', 'fused_adamw + no_verify_loss_counts + cudnn_benchmark',
            _safe_all, needs_cuda=True),
    Variant('safe_all_bf16', 'safe_all + amp_bf16',
            _safe_all, amp='bfloat16',
            needs_cuda=True),
]}


@contextlib.contextmanager
def mmcv_kernels(mode: str):
    """mmcv's CUDA kernels 'auto' (used when they work) or 'off' during a case."""
    from tbx11k.compat import mmcv_cuda_fallback
    previous = mmcv_cuda_fallback.kernel_mode()
    mmcv_cuda_fallback.set_kernel_mode(mode)
    try:
        yield
    finally:
        mmcv_cuda_fallback.set_kernel_mode(previous)


# --------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------
@dataclass
class BenchmarkOptions:
    config: str
    steps: int = 20
    warmup: int = 5
    num_images: int = 64
    image_size: int = 512
    data_root: Optional[str] = None
    stock: bool = True
    batch2: bool = False
    infer: bool = False
    profile: bool = False
    amp: Optional[str] = None
    device: Optional[str] = None
    cfg_options: Optional[Dict] = None
    variants: Sequence[str] = ()
    time_budget: float = 0.0  # seconds; cases not started within it are skipped (0: no limit)
    infer_steps: Optional[int] = None
    infer_batch_size: int = 1  # > 1: also inference at this batch size (ours and stock)
    keep_work_dir: bool = False


def plan_cases(opts: BenchmarkOptions, device: str):
    """[(CaseResult, config kwargs, msda path)] in the order they run."""
    from mmengine.config import Config
    base = Config.fromfile(opts.config)
    if opts.cfg_options:
        base.merge_from_dict(opts.cfg_options)
    batch = int(base.train_dataloader.batch_size)
    acc = one_process_accumulation(base)
    infer_steps = opts.infer_steps or max(opts.steps, 1)
    plan = []

    def add(name, kind, impl, bs, ac, variant=None, amp=opts.amp, edit=None, kernels='auto',
            skip=None, extra_warmup=0):
        result = CaseResult(name=name, kind=kind, implementation=impl, config=opts.config,
                            batch_size=bs, accumulative_counts=ac, images_per_step=bs * ac,
                            warmup=opts.warmup + extra_warmup,
                            steps={'infer': infer_steps, 'profile': 2}.get(kind, opts.steps),
                            amp=amp, variant=variant)
        if skip:
            result.status = f'skipped: {skip}'
        kwargs = dict(stock=impl == 'stock', batch_size=bs, accumulative_counts=ac, amp=amp,
                      cfg_options=opts.cfg_options, edit=edit, name=f'bench_{name}',
                      test_batch_size=bs if kind == 'infer' else None)
        plan.append((result, kwargs, kernels))

    add('ours', 'train', 'ours', batch, acc)
    if opts.stock:
        add('stock', 'train', 'stock', batch, acc)
    if opts.batch2:
        add('ours_batch2', 'train', 'ours', batch * acc, 1)
        if opts.stock:
            add('stock_batch2', 'train', 'stock', batch * acc, 1)
    if opts.infer:
        add('ours_infer', 'infer', 'ours', 1, 1)
        if opts.stock:
            add('stock_infer', 'infer', 'stock', 1, 1)
        n = int(opts.infer_batch_size)
        if n > 1:  # equal-size films (TBX11K): no padding, the same predictions as batch 1
            add(f'ours_infer_b{n}', 'infer', 'ours', n, 1)
            if opts.stock:
                add(f'stock_infer_b{n}', 'infer', 'stock', n, 1)
    if opts.profile:
        add('ours_profile', 'profile', 'ours', batch, acc)
        if opts.stock:
            add('stock_profile', 'profile', 'stock', batch, acc)
    for name in opts.variants:
        if name not in VARIANTS:
            raise ValueError(f'unknown variant {name!r}; known: {", ".join(VARIANTS)}')
        v = VARIANTS[name]
        skip = 'needs CUDA' if v.needs_cuda and device != 'cuda' else None
        if v.kind == 'infer':
            n = max(int(opts.infer_batch_size), 1)
            add(name, 'infer', 'ours', n, 1, variant=v.description, amp=v.amp or opts.amp,
                edit=v.edit, kernels=v.kernels, skip=skip, extra_warmup=v.extra_warmup)
            plan[-1][0].baseline = f'ours_infer_b{n}' if n > 1 else 'ours_infer'
        else:
            add(name, 'train', 'ours', batch, acc, variant=v.description, amp=v.amp or opts.amp,
                edit=v.edit, kernels=v.kernels, skip=skip, extra_warmup=v.extra_warmup)
            plan[-1][0].baseline = 'ours'
        plan[-1][0].diagnostic = v.diagnostic
    return plan
