"""Training / inference speed of a tbx11k config beside stock mmdet DINO, in one process.

Used by ``tools/benchmark.py`` (see its ``--help``) and by ``tools/gpu_benchmark.sh``.

Every *case* builds the real runner from a config (``TBX11KRunner`` for ours, mmengine's ``Runner``
for stock mmdet) with a temporary work dir, no validation, no checkpoints, no logging hook and the
backbone's pretrained ``init_cfg`` removed (no network; the speed does not depend on the weights),
trains on a synthetic TBX11K-format set and times optimizer steps with a hook of the lowest priority
(so every other hook of the iteration, EMA included, is inside the time): after ``warmup`` optimizer
steps, the next ``steps`` (``torch.cuda.synchronize`` first on a GPU); then the hook stops the run
by raising :class:`BenchmarkDone`. Times include data loading, as in real training.

Stock mmdet DINO is the same model (sizes, classes, loss settings), data and pipeline, with mmdet's
stock components: detector ``DINO`` (no window loss normalisation), ``EpochBasedTrainLoop`` (one
iteration = one micro-batch: an optimizer step every ``accumulative_counts`` iterations; the timer
counts micro-batches so that both report per optimizer step and per image), ``DefaultSampler`` +
``AspectRatioBatchSampler``, ``CocoDataset`` with the TBX11K classes, mmengine's ``Runner`` and no
custom hooks (stock DINO has none; ours keeps the config's ``EMAHook`` and
``CheckpointInterchangeHook``: they are part of our training).

Peak memory: ``torch.cuda.max_memory_allocated`` over the case on a GPU; on the CPU the largest
resident set size of this process sampled every 10 ms during the case (data-loader worker processes
not included).
"""
import contextlib
import copy
import gc
import json
import logging
import os
import os.path as osp
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch._dynamo

#: issue 6 targets (one H100, configs/dino_tbx11k_1gpu.py)
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


#: warnings every DINO run logs: kept out of the benchmark's output (other warnings stay)
NOISE = ('is skipped since its requires_grad=False',
         'Gradient accumulative may slightly decrease performance')


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    cfg = copy.deepcopy(cfg)
    cfg.pop('benchmark_test_dataloader', None)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.logger.addFilter(_DropNoise())
    return runner


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or this process's sampled max RSS."""

    def __init__(self, device: str, interval: float = 0.01) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def kind(self) -> str:
        return 'cuda max_memory_allocated' if self.device == 'cuda' else 'process max RSS'

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        except (OSError, ValueError, IndexError):
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())

    def __enter__(self) -> 'PeakMemory':
        if self.device == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_bytes = self.rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == 'cuda':
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2 ** 20


def _synchronize(device: str) -> Callable[[], None]:
    if device == 'cuda':
        return torch.cuda.synchronize
    return lambda: None


def make_step_timer(warmup: int, steps: int, micro_batches_per_iter: int,
                    accumulative_counts: int, device: str):
    """A Hook timing optimizer steps ``warmup+1 .. warmup+steps``, then raising BenchmarkDone.

    ``micro_batches_per_iter``: ``accumulative_counts`` for a loop whose iteration is an optimizer
    step (ours), 1 for stock loops (an optimizer step every ``accumulative_counts`` iterations)."""
    from mmengine.hooks import Hook

    sync = _synchronize(device)

    class StepTimer(Hook):
        priority = 'LOWEST'

        def __init__(self) -> None:
            self.micro_batches = 0
            self.optimizer_steps = 0
            self.marks: List[float] = []
            self.cpu_marks: List[float] = []
            self.graph_marks: List[int] = []
            self.warmup_losses: List[float] = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self.micro_batches += micro_batches_per_iter
            if self.micro_batches % accumulative_counts:
                return  # inside an accumulation window (stock loop)
            self.optimizer_steps += 1
            if self.optimizer_steps <= warmup and outputs and 'loss' in outputs:
                self.warmup_losses.append(float(outputs['loss']))  # untimed: a read is no harm
            if self.optimizer_steps < warmup:
                return
            sync()
            self.marks.append(time.perf_counter())
            self.cpu_marks.append(time.process_time())
            self.graph_marks.append(compiled_graphs())
            if self.optimizer_steps >= warmup + steps:
                raise BenchmarkDone

    return StepTimer()


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process (dynamo's counter)."""
    return int(torch._dynamo.utils.counters['stats']['unique_graphs'])


def _fill_times(result: CaseResult, marks: Sequence[float], micro_batches_per_step: int,
                cpu_marks: Sequence[float] = (), graph_marks: Sequence[int] = ()) -> None:
    """Mean / median times of the steps between ``marks``; with ``graph_marks`` (compiled
    graphs at each mark) also the steady img/s, over the steps that compiled nothing."""
    times = [b - a for a, b in zip(marks, marks[1:])]
    if len(cpu_marks) == len(marks):
        result.cpu_s_per_step = (cpu_marks[-1] - cpu_marks[0]) / max(len(times), 1)
    if not times:
        raise RuntimeError('no timed step')
    result.step_times = times
    result.seconds = marks[-1] - marks[0]
    result.s_per_step = result.seconds / len(times)
    ordered = sorted(times)
    mid = len(ordered) // 2
    result.s_per_step_median = (ordered[mid] if len(ordered) % 2
                                else (ordered[mid - 1] + ordered[mid]) / 2)
    result.s_per_micro_batch = result.s_per_step / micro_batches_per_step
    result.s_per_image = result.s_per_step / result.images_per_step
    result.img_per_s = 1.0 / result.s_per_image
    with_graphs = len(graph_marks) == len(marks)
    compiled = [b > a for a, b in zip(graph_marks, graph_marks[1:])] if with_graphs else []
    result.compiles_in_timed_steps = graph_marks[-1] - graph_marks[0] if with_graphs else 0
    result.compiling_steps = sum(compiled)
    if not result.compiling_steps:
        result.steady_img_per_s = result.img_per_s  # the same figure, bit for bit
    else:
        steady = sum(t for t, made in zip(times, compiled) if not made)
        result.steady_img_per_s = (result.images_per_step * (len(times) - result.compiling_steps)
                                   / steady if steady > 0 else None)


@contextlib.contextmanager
def cudagraph_skips_recorded(result: CaseResult, enabled: bool = True) -> Iterator[None]:
    """Record in ``result`` how many compiled graphs inductor ran without the CUDA graphs their
    mode asked for, and why (it logs each reason once per graph as a warning that scrolls by in
    a long run; a GPU run must report it beside the figure it explains)."""
    if not enabled:
        yield
        return
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_utils
    # where torch logs the reasons: cudagraphs_log (torch 2.11, 2.13), perf_hint_log before
    reason_log = (getattr(cudagraph_utils, 'cudagraphs_log', None)
                  or getattr(cudagraph_utils, 'perf_hint_log', None))
    reasons: List[str] = []

    class Reasons(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()[:300]
            if message not in reasons and len(reasons) < 10:
                reasons.append(message)

    handler = Reasons(logging.WARNING)
    before = counters['inductor']['cudagraph_skips']
    if reason_log is not None:
        reason_log.addHandler(handler)
    try:
        yield
    finally:
        if reason_log is not None:
            reason_log.removeHandler(handler)
        result.cudagraph_skips = int(counters['inductor']['cudagraph_skips'] - before)
        result.cudagraph_skip_reasons = reasons


def _cleanup(device: str) -> None:
    torch._dynamo.reset()  # a torch_compile case compiles afresh (dynamo caches per code object)
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


def time_training(cfg, result: CaseResult, device: str) -> CaseResult:
    """Train ``cfg`` for warmup + steps optimizer steps and fill ``result``."""
    acc = result.accumulative_counts
    ours_loop = cfg.train_cfg.get('type') == 'AccumulationEpochBasedTrainLoop'
    timer = make_step_timer(result.warmup, result.steps, acc if ours_loop else 1, acc, device)
    with PeakMemory(device) as memory:
        runner = build_runner(cfg)
        runner.register_hook(timer, priority='LOWEST')
        try:
            runner.train()
        except BenchmarkDone:
            # the run ends here: after_run as Runner.train would call it (the PreemptionHook
            # gives SIGTERM / SIGUSR1 back: a later case, stock or inference, stays killable)
            runner.call_hook('after_run')
        else:
            raise RuntimeError('the training ended before the timed steps were done')
        finally:
            del runner
            gc.collect()
    _fill_times(result, timer.marks, acc, timer.cpu_marks, timer.graph_marks)
    result.warmup_losses = timer.warmup_losses
    result.peak_mem_mib, result.peak_mem_kind = memory.peak_mib, memory.kind
    return result


#: CUDA runtime / driver calls counted by the profile case
LAUNCH_CALLS = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel', 'cuLaunchKernelEx',
                'cudaGraphLaunch')
SYNC_CALLS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize')
COPY_CALLS = ('cudaMemcpyAsync', 'cudaMemcpy')


def summarize_profile(prof, wall: float, micro_batches: int, top: int = 15,
                      device: str = 'cuda') -> Dict:
    """Kernel launches, host syncs and copies per micro-batch, GPU kernel time / wall time, and
    the ops with the most host (self CPU) time, from a torch.profiler run."""
    events = prof.key_averages()

    def count(names):
        return sum(e.count for e in events if e.key in names)

    cuda = getattr(torch.autograd, 'DeviceType', None)

    def self_device_us(e) -> float:
        return float(getattr(e, 'self_device_time_total', 0.0)
                     or getattr(e, 'self_cuda_time_total', 0.0) or 0.0)

    # kernel time: the CUDA-side events (kernels, copies), or else the device time the host ops
    # launched directly (the same kernels, attributed to their ops); the larger of the two
    on_device = sum(self_device_us(e) for e in events
                    if cuda is not None and getattr(e, 'device_type', None) == cuda.CUDA)
    by_ops = sum(self_device_us(e) for e in events
                 if cuda is None or getattr(e, 'device_type', None) != cuda.CUDA)
    device_us = max(on_device, by_ops)
    on_host = [e for e in events
               if cuda is None or getattr(e, 'device_type', None) != cuda.CUDA]
    host = sorted(on_host, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    aten_ops = sum(e.count for e in events if e.key.startswith('aten::'))
    return dict(
        micro_batches=micro_batches, wall_s=wall,
        aten_ops_per_micro_batch=aten_ops / micro_batches,
        kernel_launches_per_micro_batch=count(LAUNCH_CALLS) / micro_batches,
        syncs_per_micro_batch=count(SYNC_CALLS) / micro_batches,
        memcpy_calls_per_micro_batch=count(COPY_CALLS) / micro_batches,
        gpu_kernel_s=device_us / 1e6,
        gpu_busy_fraction=(device_us / 1e6) / wall if wall > 0 and device == 'cuda' else None,
        top_host_ops=[dict(name=e.key, count=e.count, self_cpu_ms=e.self_cpu_time_total / 1e3)
                      for e in host])


def make_step_profiler(warmup: int, steps: int, micro_batches_per_iter: int,
                       accumulative_counts: int, device: str):
    """A Hook profiling optimizer steps ``warmup+1 .. warmup+steps`` (torch.profiler, CPU and
    CUDA activities), then raising BenchmarkDone; the summary lands in ``hook.summary``."""
    from mmengine.hooks import Hook
    from torch.profiler import ProfilerActivity, profile

    sync = _synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])

    class StepProfiler(Hook):
        priority = 'LOWEST'

        def __init__(self) -> None:
            self.micro_batches = 0
            self.optimizer_steps = 0
            self.prof = None
            self.summary: Optional[Dict] = None

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            if (self.prof is None and self.optimizer_steps == warmup
                    and self.micro_batches % accumulative_counts == 0):
                sync()
                self.prof = profile(activities=activities)
                self.prof.__enter__()
                self.start, self.start_micro = time.perf_counter(), self.micro_batches

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self.micro_batches += micro_batches_per_iter
            if self.micro_batches % accumulative_counts:
                return
            self.optimizer_steps += 1
            if self.prof is not None and self.optimizer_steps >= warmup + steps:
                sync()
                wall = time.perf_counter() - self.start
                self.prof.__exit__(None, None, None)
                self.summary = summarize_profile(self.prof, wall,
                                                 self.micro_batches - self.start_micro,
                                                 device=device)
                raise BenchmarkDone

    return StepProfiler()


def profile_training(cfg, result: CaseResult, device: str) -> CaseResult:
    """Like :func:`time_training`, but profiles the ``steps`` optimizer steps after warm-up."""
    acc = result.accumulative_counts
    ours_loop = cfg.train_cfg.get('type') == 'AccumulationEpochBasedTrainLoop'
    hook = make_step_profiler(result.warmup, result.steps, acc if ours_loop else 1, acc, device)
    runner = build_runner(cfg)
    runner.register_hook(hook, priority='LOWEST')
    try:
        runner.train()
    except BenchmarkDone:
        pass
    else:
        raise RuntimeError('the training ended before the profiled steps were done')
    finally:
        del runner
        gc.collect()
    result.profile = hook.summary
    result.seconds = hook.summary['wall_s']
    return result


def _autocast(device: str, amp: Optional[str]):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, amp))


def time_inference(cfg, result: CaseResult, device: str) -> CaseResult:
    """Run the model's test_step on the test pipeline; time batches warmup+1 .. warmup+steps."""
    from mmengine.runner import Runner
    sync = _synchronize(device)
    with PeakMemory(device) as memory:
        runner = build_runner(cfg)
        try:
            loader_cfg = copy.deepcopy(cfg.benchmark_test_dataloader)
            loader_cfg.persistent_workers = False
            loader = Runner.build_dataloader(loader_cfg, seed=runner.seed)
            result.images_per_step = int(loader.batch_size or 1)
            model = runner.model
            model.eval()
            marks: List[float] = []
            cpu_marks: List[float] = []
            graph_marks: List[int] = []
            done = 0
            with torch.no_grad(), _autocast(device, result.amp):
                while done < result.warmup + result.steps:
                    for batch in loader:
                        model.test_step(batch)
                        done += 1
                        if done >= result.warmup:
                            sync()
                            marks.append(time.perf_counter())
                            cpu_marks.append(time.process_time())
                            graph_marks.append(compiled_graphs())
                        if done >= result.warmup + result.steps:
                            break
        finally:
            del runner
            gc.collect()
    _fill_times(result, marks, 1, cpu_marks, graph_marks)
    result.peak_mem_mib, result.peak_mem_kind = memory.peak_mib, memory.kind
    return result


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
    from tbx11k.models import mmcv_cuda_fallback
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


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def environment(device: str) -> Dict:
    import mmcv
    import mmdet
    import mmengine

    from tbx11k.models import mmcv_cuda_fallback
    env = dict(python=platform.python_version(), torch=torch.__version__,
               torch_cuda=torch.version.cuda, mmcv=mmcv.__version__, mmdet=mmdet.__version__,
               mmengine=mmengine.__version__, device=device, host=platform.node(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               mmcv_compiled_with_cuda=mmcv_cuda_fallback.mmcv_compiled_with_cuda())
    if device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
        env['gpu_count'] = torch.cuda.device_count()
    else:
        env['gpu'] = None
    env['kernels'] = mmcv_cuda_fallback.kernel_report(torch.device(device))
    env['msda_path'] = env['kernels']['ms_deform_attn']
    # the PyTorch fallbacks against the kernels (outputs and gradients), where both run
    try:
        env['fallback_check'] = mmcv_cuda_fallback.compare_with_kernels(device)
    except Exception as error:  # noqa: BLE001
        env['fallback_check'] = dict(error=f'{type(error).__name__}: {error}'[:300])
    try:  # ForeachExponentialMovingAverage against mmengine's EMA, on this device
        from tbx11k.models.foreach_ema import compare_with_mmengine_ema
        env['foreach_ema_check'] = compare_with_mmengine_ema(device)
    except Exception as error:  # noqa: BLE001
        env['foreach_ema_check'] = dict(error=f'{type(error).__name__}: {error}'[:300])
    try:  # the default BatchedLossDINOHead against mmdet's DINOHead, on this device
        from tbx11k.models.batched_loss_check import compare_with_stock_head
        env['batched_loss_check'] = compare_with_stock_head(device)
    except Exception as error:  # noqa: BLE001
        env['batched_loss_check'] = dict(error=f'{type(error).__name__}: {error}'[:300])
    return env


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def compute_ratios(cases: List[CaseResult]) -> Dict[str, Optional[float]]:
    by = {c.name: c for c in cases if c.ok}

    def ips(name):
        return by[name].img_per_s if name in by else None

    def spi(name):
        return by[name].s_per_image if name in by else None

    ratios = dict(
        train_vs_stock=_ratio(ips('ours'), ips('stock')),
        batch2_vs_stock_batch2=_ratio(ips('ours_batch2'), ips('stock_batch2')),
        accumulation_overhead=_ratio(spi('ours'), spi('ours_batch2')),
        stock_accumulation_overhead=_ratio(spi('stock'), spi('stock_batch2')),
        infer_vs_stock=_ratio(ips('ours_infer'), ips('stock_infer')),
    )
    for case in cases:
        if case.kind == 'infer' and case.name.startswith('ours_infer_b'):
            suffix = case.name[len('ours_infer'):]
            ratios[f'infer{suffix}_vs_stock'] = _ratio(ips(case.name), ips('stock_infer' + suffix))
    for case in cases:
        if case.variant and case.ok:
            baseline = case.baseline or 'ours'
            ratios[f'{case.name}_vs_{baseline}'] = _ratio(case.img_per_s, ips(baseline))
    return ratios


def check_targets(cases: List[CaseResult], ratios: Dict, env: Dict) -> Dict:
    """The issue's targets against this run (they are stated for one H100)."""
    by = {c.name: c for c in cases if c.ok}
    candidates = [c for c in cases if c.ok and c.kind == 'train'
                  and c.batch_size == by['ours'].batch_size
                  and c.accumulative_counts == by['ours'].accumulative_counts
                  and c.implementation == 'ours' and not c.diagnostic] if 'ours' in by else []
    best_train = max(candidates, key=lambda c: c.img_per_s, default=None)
    out = dict(targets=TARGETS, measured_on=env.get('gpu') or 'cpu',
               applies=bool(env.get('gpu') and 'H100' in env['gpu']))
    out['train_img_per_s'] = by['ours'].img_per_s if 'ours' in by else None
    out['best_train_case'] = best_train.name if best_train else None
    out['best_train_img_per_s'] = best_train.img_per_s if best_train else None
    out['train_met'] = bool(best_train and best_train.img_per_s >= TARGETS['train_img_per_s'])
    # the same over the steps that compiled nothing (torch.compile cases that recompiled in the
    # timed steps; a long training pays those compiles once)
    steady = max([c for c in candidates if c.steady_img_per_s],
                 key=lambda c: c.steady_img_per_s, default=None)
    out['best_train_steady_case'] = steady.name if steady else None
    out['best_train_steady_img_per_s'] = steady.steady_img_per_s if steady else None
    out['train_met_steady'] = bool(steady and steady.steady_img_per_s
                                   >= TARGETS['train_img_per_s'])
    ovh = ratios.get('accumulation_overhead')
    out['accumulation_overhead_met'] = bool(ovh is not None
                                            and ovh <= TARGETS['accumulation_overhead'])
    infer = by.get('ours_infer')
    out['infer_img_per_s'] = infer.img_per_s if infer else None
    out['infer_met'] = bool(infer and infer.img_per_s >= TARGETS['infer_img_per_s'])
    best_infer = max([c for c in cases
                      if c.ok and c.kind == 'infer' and c.implementation == 'ours'],
                     key=lambda c: c.img_per_s, default=None)
    out['best_infer_case'] = best_infer.name if best_infer else None
    out['best_infer_img_per_s'] = best_infer.img_per_s if best_infer else None
    out['best_infer_met'] = bool(best_infer and best_infer.img_per_s >= TARGETS['infer_img_per_s'])
    return out


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
                            warmup=opts.warmup + extra_warmup, steps={'infer': infer_steps, 'profile': 2}.get(
                                kind, opts.steps), amp=amp, variant=variant)
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


def make_report(opts: BenchmarkOptions, env: Dict, cases: List[CaseResult],
                seconds: float) -> Dict:
    ratios = compute_ratios(cases)
    return dict(environment=env, options=asdict(opts), cases=[asdict(c) for c in cases],
                ratios=ratios, targets=check_targets(cases, ratios, env), total_seconds=seconds)


def run_benchmark(opts: BenchmarkOptions, log: Callable[[str], None] = print,
                  json_path: Optional[str] = None) -> Dict:
    """Run every planned case; return {'environment', 'options', 'cases', 'ratios', 'targets',
    'total_seconds'}. With ``json_path`` the report is also written after every case (a run
    killed by a time limit keeps what it measured)."""
    import tbx11k  # noqa: F401  (registers our components, installs the mmcv fallback)

    device = opts.device or default_device()
    if device not in ('cuda', 'cpu'):
        raise ValueError(f'device must be cuda or cpu, got {device!r}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda, but torch sees no GPU')
    if device == 'cpu' and torch.cuda.is_available():
        raise SystemExit('error: --device cpu on a machine with a GPU: run with '
                         'CUDA_VISIBLE_DEVICES= (tools/benchmark.py --device cpu does this)')
    if opts.amp and device != 'cuda':
        raise SystemExit('error: --amp needs a GPU (mmengine AmpOptimWrapper refuses the CPU)')
    if opts.warmup < 1 or opts.steps < 1:
        raise SystemExit('error: --warmup and --steps must be >= 1')
    started = time.perf_counter()
    env = environment(device)
    log(f'device: {env["gpu"] or "cpu"} | torch {env["torch"]} (CUDA {env["torch_cuda"]}) | '
        f'mmcv {env["mmcv"]} | mmdet {env["mmdet"]} | mmengine {env["mmengine"]}')
    log(f'MultiScaleDeformableAttention: {env["msda_path"]}')
    log(f'FocalLoss: {env["kernels"]["sigmoid_focal_loss"]}')
    log(f'PyTorch fallbacks vs mmcv kernels: {env["fallback_check"]}')
    log(f'foreach EMA vs mmengine EMA: {env["foreach_ema_check"]}')
    log(f'BatchedLossDINOHead vs DINOHead: {env["batched_loss_check"]}')

    tmp = tempfile.mkdtemp(prefix='tbx11k_bench_')
    try:
        data_root = opts.data_root or osp.join(tmp, 'data')
        t0 = time.perf_counter()
        existed = osp.isfile(osp.join(data_root, TRAIN_ANN))
        prepare_data(data_root, opts.num_images, opts.image_size)
        log(f'data: {data_root} ' + ('(existing)' if existed else
            f'({opts.num_images} synthetic train images, {opts.image_size} px, made in '
            f'{time.perf_counter() - t0:.1f} s)'))
        plan = plan_cases(opts, device)
        cases: List[CaseResult] = []
        for result, kwargs, kernels in plan:
            cases.append(result)
            if not result.ok:
                log(f'[{result.name}] {result.status}')
                continue
            elapsed = time.perf_counter() - started
            if opts.time_budget and elapsed > opts.time_budget:
                result.status = f'skipped: time budget ({opts.time_budget:.0f} s) spent'
                log(f'[{result.name}] {result.status}')
                continue
            work_dir = osp.join(tmp, result.name)
            t0 = time.perf_counter()
            try:
                cfg = benchmark_config(opts.config, data_root, work_dir, **kwargs)
                compiled = cfg.model.get('torch_compile') not in (None, False)
                with mmcv_kernels(kernels), cudagraph_skips_recorded(result, compiled):
                    measure = dict(train=time_training, infer=time_inference,
                                   profile=profile_training)[result.kind]
                    measure(cfg, result, device)
            except Exception as error:  # noqa: BLE001  (report it, go on with the next case)
                first = (str(error).strip().splitlines() or [''])[0][:300]
                result.status = f'error: {type(error).__name__}: {first}'
                traceback.print_exc()  # to stderr: a one-shot GPU run must say what failed
            finally:
                _cleanup(device)
            if json_path:
                write_json(make_report(opts, env, cases, time.perf_counter() - started),
                           json_path)
            log(f'[{result.name}] {result.status}: ' + (
                _profile_line(result.profile) if result.ok and result.kind == 'profile' else
                f'{result.img_per_s:.3f} img/s, {result.s_per_step:.4f} s/step, '
                f'peak {result.peak_mem_mib:.0f} MiB' if result.ok else '') +
                f' ({time.perf_counter() - t0:.1f} s)')
    finally:
        if not opts.keep_work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    report = make_report(opts, env, cases, time.perf_counter() - started)
    if json_path:
        write_json(report, json_path)
    return report


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _fmt(x, spec='.3f', none='-'):
    return none if x is None else format(x, spec)


def _profile_line(p: Optional[Dict]) -> str:
    if not p:
        return 'no profile'
    busy = p['gpu_busy_fraction']
    return (f"per micro-batch: {p['aten_ops_per_micro_batch']:.0f} aten ops, "
            f"{p['kernel_launches_per_micro_batch']:.0f} kernel launches, "
            f"{p['syncs_per_micro_batch']:.0f} syncs, {p['memcpy_calls_per_micro_batch']:.0f} "
            f"copies; GPU busy " + ('-' if busy is None else f'{100 * busy:.0f} %') +
            f" of {p['wall_s']:.2f} s (under the profiler)")


def _warmup_losses(cases: Sequence[Dict]) -> List[str]:
    """A sanity line: the summed loss of the first warm-up optimizer steps (as many as every case
    has) of ours and of its training variants (same data, seed and initial weights: fp32 variants
    agree with ours up to float rounding)."""
    def beside_ours(c: Dict) -> bool:
        return c['name'] == 'ours' or bool(c['variant']) and (c.get('baseline') or 'ours') == 'ours'

    runs = {c['name']: c['warmup_losses'] for c in cases
            if c['status'] == 'ok' and c['kind'] == 'train' and c.get('warmup_losses')
            and beside_ours(c)}
    if 'ours' not in runs:
        return []
    steps = min(len(values) for values in runs.values())
    losses = {name: sum(values[:steps]) for name, values in runs.items()}
    ref = losses['ours']
    return [f'loss summed over the first {steps} optimizer steps (fp32 variants match ours up to '
            'float rounding): ' +
            ', '.join(f'{name} {value:.7g}' + ('' if name == 'ours' else
                                               f' ({(value - ref) / max(abs(ref), 1e-12):+.1e})')
                      for name, value in losses.items())]


def format_table(report: Dict) -> str:
    env, ratios = report['environment'], report['ratios']
    cases = report['cases']
    by = {c['name']: c for c in cases if c['status'] == 'ok'}
    header = ('case', 'batch x acc', 'amp', 'img/s', 's/opt step', 's/micro-batch',
              'CPU s/step', 'peak MiB', 'ratio')
    rows, notes = [], []
    for c in cases:
        if c['kind'] == 'profile':
            notes.append(f"{c['name']}: " + (_profile_line(c['profile']) if c['status'] == 'ok'
                                              else c['status']))
            continue
        ref = None
        if c['variant']:
            ref = by.get(c.get('baseline') or 'ours')
        elif c['implementation'] == 'ours':
            ref = by.get(c['name'].replace('ours', 'stock', 1))
        ratio = None
        if c['status'] == 'ok' and ref:
            ratio = c['img_per_s'] / ref['img_per_s']
            ratio = f'{ratio:.2f}x vs {ref["name"]}'
        if c['status'] != 'ok':
            rows.append((c['name'], f"{c['batch_size']} x {c['accumulative_counts']}",
                         c['amp'] or '-', c['status'], '', '', '', '', ''))
            continue
        infer = c['kind'] == 'infer'
        rows.append((c['name'], f"{c['batch_size']} x {c['accumulative_counts']}"
                     + (' (infer)' if infer else ''), c['amp'] or '-',
                     _fmt(c['img_per_s'], '.3g'), '-' if infer else _fmt(c['s_per_step'], '.4f'),
                     _fmt(c['s_per_micro_batch'], '.4f'), _fmt(c['cpu_s_per_step'], '.4f'),
                     _fmt(c['peak_mem_mib'], '.0f'), ratio or '-'))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = [' | '.join(str(h).ljust(w) for h, w in zip(header, widths)),
             '-+-'.join('-' * w for w in widths)]
    lines += [' | '.join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines += notes
    lines += [f"{c['name']}: {c['compiles_in_timed_steps']} torch.compile graph(s) made during "
              f"{c.get('compiling_steps', '?')} of the {len(c.get('step_times') or ()) or '?'} "
              'timed steps (in the mean); over the others: '
              f"{_fmt(c.get('steady_img_per_s'), '.3g')} img/s"
              for c in cases if c.get('compiles_in_timed_steps')]
    lines += [f"{c['name']}: {c['cudagraph_skips']} compiled graph(s) ran without CUDA graphs"
              + ('; inductor logged: ' + ' | '.join(c['cudagraph_skip_reasons'])
                 if c.get('cudagraph_skip_reasons') else '')
              for c in cases if c.get('cudagraph_skips') or c.get('cudagraph_skip_reasons')]
    lines += _warmup_losses(cases)
    mem = next((c['peak_mem_kind'] for c in cases if c['peak_mem_kind']), '')
    lines.append(f"config: {report['options']['config']} | device: {env['gpu'] or 'cpu'} | "
                 f"torch {env['torch']} | MSDA: {env['msda_path']} | peak memory: {mem}")
    if ratios.get('accumulation_overhead') is not None:
        lines.append('accumulation overhead (s/image of batch 1 x acc 2 / of batch 2 x acc 1): '
                     f"ours {_fmt(ratios['accumulation_overhead'], '.2f')}, stock "
                     f"{_fmt(ratios.get('stock_accumulation_overhead'), '.2f')} "
                     f"(target <= {TARGETS['accumulation_overhead']})")
    t = report['targets']
    lines.append(f"targets (one H100): train >= {TARGETS['train_img_per_s']} img/s, infer >= "
                 f"{TARGETS['infer_img_per_s']} img/s; this run: train "
                 f"{_fmt(t['best_train_img_per_s'], '.2f')} ({t['best_train_case']})"
                 + (f" ({_fmt(t['best_train_steady_img_per_s'], '.2f')} "
                    f"({t['best_train_steady_case']}) over the steps without compiling)"
                    if t.get('best_train_steady_case') and (
                        t['best_train_steady_case'] != t['best_train_case']
                        or t['best_train_steady_img_per_s'] != t['best_train_img_per_s'])
                    else '')
                 + ", infer "
                 f"{_fmt(t['infer_img_per_s'], '.2f')} (batch 1)"
                 + (f", {_fmt(t['best_infer_img_per_s'], '.2f')} ({t['best_infer_case']})"
                    if t.get('best_infer_case') not in (None, 'ours_infer') else '')
                 + f" on {t['measured_on']}"
                 + ('' if t['applies'] else ' (not an H100: targets not assessed)'))
    return '\n'.join(lines)


def write_json(report: Dict, path: str) -> None:
    """Write the report atomically: a run killed mid-write (a time limit) keeps the last one."""
    from tbx11k.utils.atomic_io import atomic_write_text
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    atomic_write_text(json.dumps(report, indent=2, default=str), path)


def parse_args(argv=None):
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Time training (and inference) of a config beside stock mmdet DINO on '
        'synthetic TBX11K data, in one process.')
    parser.add_argument('config')
    parser.add_argument('--steps', type=int, default=20, help='timed optimizer steps (default 20)')
    parser.add_argument('--warmup', type=int, default=5,
                        help='optimizer steps before the timing starts (default 5)')
    parser.add_argument('--infer-steps', type=int,
                        help='timed inference batches (default: --steps)')
    parser.add_argument('--infer-batch-size', type=int, default=1,
                        help='> 1: also time inference at this batch size (ours and stock)')
    parser.add_argument('--num-images', type=int, default=64, help='synthetic train images')
    parser.add_argument('--image-size', type=int, default=512, help='synthetic image side')
    parser.add_argument('--data-root', help='TBX11K-format root to use (made there if missing; '
                        'default: a temporary one)')
    parser.add_argument('--no-stock', action='store_true', help='skip the stock mmdet baseline')
    parser.add_argument('--batch2', action='store_true', help='also batch 2 x acc 1 '
                        '(accumulation overhead), for ours and stock')
    parser.add_argument('--infer', action='store_true', help='also inference img/s and memory')
    parser.add_argument('--profile', action='store_true', help='also profile 2 optimizer steps '
                        'of ours and stock (aten ops, kernel launches, syncs, GPU busy fraction, '
                        'top host ops)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper, as '
                        'tools/train.py --amp) for every case; GPU only')
    parser.add_argument('--amp-dtype', choices=AMP_DTYPES, default='float16')
    parser.add_argument('--device', choices=['cuda', 'cpu'], help='default: cuda when present')
    parser.add_argument('--variants', default='', help='comma-separated speed-up switches, each '
                        f'timed on its own against ours: {", ".join(VARIANTS)}, or "all"')
    parser.add_argument('--time-budget', type=float, default=0.0,
                        help='seconds; cases not started by then are skipped (0: no limit)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of CONFIG (both ours and stock), key=value')
    parser.add_argument('--json', help='write every figure to this file')
    parser.add_argument('--keep-work-dir', action='store_true')
    return parser.parse_args(argv)


def options_from_args(args) -> BenchmarkOptions:
    variants = [v for v in args.variants.split(',') if v]
    if variants == ['all']:
        variants = list(VARIANTS)
    return BenchmarkOptions(
        config=args.config, steps=args.steps, warmup=args.warmup, num_images=args.num_images,
        image_size=args.image_size, data_root=args.data_root, stock=not args.no_stock,
        batch2=args.batch2, infer=args.infer, profile=args.profile,
        amp=args.amp_dtype if args.amp else None,
        device=args.device, cfg_options=dict(args.cfg_options) if args.cfg_options else None,
        variants=variants, time_budget=args.time_budget, infer_steps=args.infer_steps,
        infer_batch_size=args.infer_batch_size,
        keep_work_dir=args.keep_work_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run_benchmark(options_from_args(args), json_path=args.json)
    print(format_table(report))
    if args.json:
        print(f'figures written to {args.json}')
    return 0 if all(c['status'] == 'ok' or c['status'].startswith('skipped')
                    for c in report['cases']) else 1
