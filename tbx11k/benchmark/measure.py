"""Measuring a case: the runner, step timers, the profiler, peak memory, training and inference."""
import contextlib
import copy
import gc
import logging
import os
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch._dynamo

from .cases import BenchmarkDone, CaseResult

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


def release_memory(device: str) -> None:
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
