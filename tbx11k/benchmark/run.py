"""The whole benchmark run: every planned case, one after the other, in one process."""
import os.path as osp
import shutil
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch
import torch._dynamo

from .cases import (
    TRAIN_ANN,
    BenchmarkOptions,
    CaseResult,
    benchmark_config,
    mmcv_kernels,
    plan_cases,
    prepare_data,
)
from .environment import default_device, environment
from .measure import (
    cudagraph_skips_recorded,
    profile_training,
    release_memory,
    time_inference,
    time_training,
)
from .report import make_report, profile_line, write_json


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
                         'CUDA_VISIBLE_DEVICES= (tools/analysis_tools/benchmark.py --device cpu '
                         'does this)')
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
                release_memory(device)
            if json_path:
                write_json(make_report(opts, env, cases, time.perf_counter() - started),
                           json_path)
            log(f'[{result.name}] {result.status}: ' + (
                profile_line(result.profile) if result.ok and result.kind == 'profile' else
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
