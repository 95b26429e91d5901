"""tools/analysis_tools/benchmark.py on the tiny config, CPU: CI runs the whole path (timings
not asserted)."""
import dataclasses
import json
import math
import sys

import pytest
from mmengine.config import Config

from tbx11k.benchmark import measure
from tbx11k.benchmark.cases import BenchmarkDone, BenchmarkOptions, CaseResult, benchmark_config
from tbx11k.benchmark.measure import (
    _fill_times,
    cudagraph_skips_recorded,
    make_step_timer,
    summarize_profile,
)
from tbx11k.benchmark.report import check_targets, compute_ratios, format_table
from tbx11k.benchmark.run import run_benchmark
from tbx11k.testing import REPO_ROOT, TINY_1GPU, TINY_EB4, run

CASE_FIELDS = {f.name for f in dataclasses.fields(CaseResult)}
FIGURES = ('seconds', 'img_per_s', 's_per_step', 's_per_step_median', 's_per_micro_batch',
           's_per_image', 'cpu_s_per_step', 'peak_mem_mib')


def bench(tmp_path, data_root, *extra):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable,
           f'{REPO_ROOT}/tools/analysis_tools/benchmark.py', TINY_1GPU, '--device', 'cpu',
           '--steps', '3',
           '--warmup', '2', '--data-root', str(data_root), '--json', str(out), *extra]
    proc = run(cmd, timeout=300)
    return json.loads(out.read_text()), proc.stdout


def check_case(case, name, batch, acc):
    assert set(case) == CASE_FIELDS
    assert case['name'] == name and case['status'] == 'ok', case['status']
    assert (case['batch_size'], case['accumulative_counts']) == (batch, acc)
    assert all(case[k] > 0 for k in FIGURES), case
    assert len(case['step_times']) == 3 and case['steps'] == 3 and case['warmup'] == 2
    assert case['s_per_micro_batch'] == pytest.approx(
        case['s_per_step'] / (acc if case['kind'] == 'train' else 1))
    assert case['img_per_s'] == pytest.approx(case['images_per_step'] / case['s_per_step'])
    assert case['peak_mem_kind'] == 'process max RSS'


def check_report(report):
    assert set(report) == {'environment', 'options', 'cases', 'ratios', 'targets', 'total_seconds'}
    env = report['environment']
    for key in ('python', 'torch', 'mmcv', 'mmdet', 'mmengine', 'device', 'gpu', 'msda_path',
                'kernels', 'mmcv_compiled_with_cuda', 'cpu_count', 'torch_threads'):
        assert key in env, key
    assert env['device'] == 'cpu' and env['gpu'] is None
    assert env['msda_path'].startswith('PyTorch')
    assert set(report['ratios']) >= {'train_vs_stock', 'batch2_vs_stock_batch2',
                                     'accumulation_overhead', 'stock_accumulation_overhead',
                                     'infer_vs_stock'}
    assert set(report['targets']) >= {'targets', 'measured_on', 'applies', 'train_met',
                                      'accumulation_overhead_met', 'infer_met'}
    assert report['targets']['applies'] is False  # not an H100


@pytest.mark.slow
def test_ours_only_with_inference(tmp_path, synthetic_root):
    report, stdout = bench(tmp_path, synthetic_root, '--no-stock', '--infer', '--profile',
                           '--infer-batch-size', '2')
    check_report(report)
    assert [c['name'] for c in report['cases']] == ['ours', 'ours_infer', 'ours_infer_b2',
                                                    'ours_profile']
    check_case(report['cases'][0], 'ours', 1, 2)
    losses = report['cases'][0]['warmup_losses']
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert 'loss summed over the first 2 optimizer steps (fp32 variants match ours up to float ' \
        'rounding): ours ' in stdout
    check_case(report['cases'][1], 'ours_infer', 1, 1)
    check_case(report['cases'][2], 'ours_infer_b2', 2, 1)
    assert report['cases'][2]['images_per_step'] == 2
    assert report['targets']['best_infer_case'] in ('ours_infer', 'ours_infer_b2')
    profile = report['cases'][3]
    assert profile['status'] == 'ok' and profile['profile']['micro_batches'] == 4
    assert profile['profile']['top_host_ops'] and profile['profile']['gpu_busy_fraction'] is None
    assert 'ours_profile: per micro-batch' in stdout
    assert report['ratios']['train_vs_stock'] is None
    assert 'MultiScaleDeformableAttention: PyTorch' in stdout
    assert 'img/s' in stdout and 'ours_infer' in stdout


@pytest.mark.slow
def test_beside_stock_with_batch2(tmp_path, synthetic_root):
    report, stdout = bench(tmp_path, synthetic_root, '--batch2', '--variants', 'amp_bf16')
    check_report(report)
    cases = {c['name']: c for c in report['cases']}
    assert list(cases) == ['ours', 'stock', 'ours_batch2', 'stock_batch2', 'amp_bf16']
    check_case(cases['ours'], 'ours', 1, 2)
    check_case(cases['stock'], 'stock', 1, 2)
    check_case(cases['ours_batch2'], 'ours_batch2', 2, 1)
    check_case(cases['stock_batch2'], 'stock_batch2', 2, 1)
    assert cases['amp_bf16']['status'] == 'skipped: needs CUDA'
    ratios = report['ratios']
    for key in ('train_vs_stock', 'batch2_vs_stock_batch2', 'accumulation_overhead',
                'stock_accumulation_overhead'):
        assert ratios[key] > 0, key
    assert 'amp_bf16_vs_ours' not in ratios
    assert 'vs stock' in stdout and 'accumulation overhead' in stdout


def test_cpu_refuses_amp(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match='--amp needs a GPU'):
        run_benchmark(BenchmarkOptions(TINY_1GPU, amp='float16'))


# ---- pieces, without training -------------------------------------------------------------
def test_stock_config_is_stock_mmdet_with_the_same_model_and_data(tmp_path):
    ours = benchmark_config(TINY_1GPU, str(tmp_path), str(tmp_path / 'w'))
    stock = benchmark_config(TINY_1GPU, str(tmp_path), str(tmp_path / 'w'), stock=True)
    assert stock.model.type == 'DINO' and 'loss_normalization' not in stock.model
    assert ours.model.type == 'WindowNormalizedDINO'
    assert ours.model.bbox_head.type == 'BatchedLossDINOHead'
    assert stock.model.bbox_head.type == 'DINOHead'

    def model_settings(cfg, drop):
        settings = {k: v for k, v in cfg.model.items() if k not in drop}
        settings['bbox_head'] = {k: v for k, v in cfg.model.bbox_head.items() if k != 'type'}
        return settings

    assert model_settings(stock, ('type', )) == model_settings(ours, ('type',
                                                                      'loss_normalization'))
    assert 'runner_type' not in stock and ours.runner_type == 'TBX11KRunner'
    assert stock.train_cfg.type == 'EpochBasedTrainLoop'
    loader = stock.train_dataloader
    assert loader.sampler.type == 'DefaultSampler'
    assert loader.batch_sampler.type == 'AspectRatioBatchSampler'
    assert loader.dataset.type == 'CocoDataset'
    assert loader.dataset.metainfo.classes == ours.train_dataloader.dataset.metainfo.classes
    assert loader.dataset.pipeline == ours.train_dataloader.dataset.pipeline
    assert loader.dataset.ann_file == ours.train_dataloader.dataset.ann_file
    # the same optimizer settings; torch's AdamW stepping one tensor at a time (mmdet's)
    assert ours.optim_wrapper.optimizer.type == 'MergedGroupsAdamW'
    assert stock.optim_wrapper.optimizer.type == 'AdamW'
    stock.optim_wrapper.optimizer.type = ours.optim_wrapper.optimizer.type
    assert stock.optim_wrapper == ours.optim_wrapper
    assert stock.optim_wrapper.accumulative_counts == 2
    assert stock.custom_hooks == []
    # quiet and self-contained
    for cfg in (ours, stock):
        assert cfg.val_dataloader is None and cfg.test_dataloader is None
        assert cfg.default_hooks.checkpoint is None and cfg.model.backbone.init_cfg is None


def test_benchmark_config_leaves_the_training_settings_alone(tmp_path):
    cfg = Config.fromfile(TINY_1GPU)
    ours = benchmark_config(TINY_1GPU, str(tmp_path), str(tmp_path / 'w'))
    assert ours.optim_wrapper == cfg.optim_wrapper
    assert ours.model.bbox_head == cfg.model.bbox_head and ours.model.dn_cfg == cfg.model.dn_cfg
    assert ours.param_scheduler == cfg.param_scheduler
    assert ours.custom_hooks == cfg.custom_hooks
    assert ours.train_dataloader.sampler == cfg.train_dataloader.sampler
    b2 = benchmark_config(TINY_1GPU, str(tmp_path), str(tmp_path / 'w'), batch_size=2,
                          accumulative_counts=1)
    assert (b2.train_dataloader.batch_size, b2.optim_wrapper.accumulative_counts,
            b2.effective_batch_size) == (2, 1, 2)
    # accumulative_counts='auto' on the benchmark's one process: the whole effective batch
    eb4 = benchmark_config(TINY_EB4, str(tmp_path), str(tmp_path / 'w'))
    assert (eb4.optim_wrapper.accumulative_counts, eb4.effective_batch_size) == (4, 4)


@pytest.mark.parametrize('per_iter,acc,iters,marks', [
    (2, 2, 5, 4),  # ours: every iteration is an optimizer step of 2 micro-batches
    (1, 2, 10, 4),  # stock: an optimizer step every 2 iterations
    (1, 1, 5, 4),  # no accumulation
])
def test_step_timer_counts_optimizer_steps(per_iter, acc, iters, marks):
    timer = make_step_timer(warmup=2, steps=3, micro_batches_per_iter=per_iter,
                            accumulative_counts=acc, device='cpu')
    done = 0
    with pytest.raises(BenchmarkDone):
        for done in range(1, 100):
            timer.after_train_iter(None, done - 1, outputs=dict(loss=float(done)))
    assert done == iters and timer.optimizer_steps == 5 and len(timer.marks) == marks
    # the iterations ending the 2 warm-up steps
    assert timer.warmup_losses == [float(acc // per_iter), float(2 * acc // per_iter)]


def test_steady_img_per_s_leaves_out_the_steps_that_compiled():
    def case(name):  # 2 images x 2 micro-batches per optimizer step: 4 images per step
        return CaseResult(name=name, kind='train', implementation='ours', config='c',
                          batch_size=2, accumulative_counts=2, images_per_step=4, warmup=1,
                          steps=4)

    result = case('torch_compile')
    # 4 steps of 0.2 s, the third 10 s: it made 3 graphs (a recompile in the timed steps)
    marks, graphs = [0.0, 0.2, 0.4, 10.4, 10.6], [7, 7, 7, 10, 10]
    _fill_times(result, marks, 2, graph_marks=graphs)
    assert result.compiles_in_timed_steps == 3 and result.compiling_steps == 1
    assert result.img_per_s == pytest.approx(16 / 10.6)
    assert result.s_per_micro_batch == pytest.approx(10.6 / 4 / 2)
    assert result.steady_img_per_s == pytest.approx(20.0)
    _fill_times(result, marks[:3], 2, graph_marks=graphs[:3])  # no compiling: the mean
    assert result.compiling_steps == 0 and result.img_per_s == pytest.approx(20.0)
    assert result.steady_img_per_s == result.img_per_s
    _fill_times(result, marks, 2)  # no graph marks (stock): all steps count
    assert result.compiling_steps == 0 and result.steady_img_per_s == result.img_per_s
    # every step compiled: no steady figure
    _fill_times(result, marks[:3], 2, graph_marks=[1, 2, 3])
    assert result.steady_img_per_s is None and result.compiling_steps == 2

    ours = case('ours')
    _fill_times(ours, [0.0, 0.4, 0.8, 1.2, 1.6], 2, graph_marks=[0] * 5)
    _fill_times(result, marks, 2, graph_marks=graphs)
    result.variant = 'torch_compile'
    targets = check_targets([ours, result], {}, dict(gpu='NVIDIA H100 80GB HBM3'))
    assert targets['best_train_case'] == 'ours' and not targets['train_met']  # 10 > 1.5 img/s
    assert targets['best_train_steady_case'] == 'torch_compile'
    assert targets['best_train_steady_img_per_s'] == pytest.approx(20.0)
    assert not targets['train_met_steady']  # 20 < 25
    report = dict(environment=dict(gpu=None, torch='t', msda_path='PyTorch'),
                  options=dict(config='c'),
                  cases=[dataclasses.asdict(c) for c in (ours, result)], ratios={},
                  targets=targets)
    table = format_table(report)
    assert 'torch_compile: 3 torch.compile graph(s) made during 1 of the 4 timed steps (in the ' \
        'mean); over the others: 20 img/s' in table
    assert 'train 10.00 (ours) (20.00 (torch_compile) over the steps without compiling)' in table
    # an eager best case: its steady figure is its mean, not repeated
    targets = check_targets([ours], {}, dict(gpu=None))
    assert targets['best_train_steady_case'] == 'ours'
    report.update(cases=[dataclasses.asdict(ours)], targets=targets)
    assert 'train 10.00 (ours), infer' in format_table(report)


def test_timed_steps_record_torch_compile_graphs(monkeypatch, synthetic_root):
    """Training and inference cases mark dynamo's graph count at every timed step."""
    calls = iter(range(1000))
    monkeypatch.setattr(measure, 'compiled_graphs', lambda: next(calls))  # a graph every step
    opts = BenchmarkOptions(config=TINY_1GPU, steps=2, warmup=1, num_images=8, image_size=128,
                            data_root=str(synthetic_root), stock=False, infer=True,
                            device='cpu')
    report = run_benchmark(opts, log=lambda message: None)
    cases = {c['name']: c for c in report['cases']}
    for name in ('ours', 'ours_infer'):
        assert cases[name]['status'] == 'ok', cases[name]['status']
        assert cases[name]['compiling_steps'] == 2 and cases[name]['compiles_in_timed_steps'] == 2
        assert cases[name]['steady_img_per_s'] is None


def test_ratios_and_targets():
    def case(name, impl, bs, acc, ips, kind='train', variant=None, baseline=None):
        c = CaseResult(name=name, kind=kind, implementation=impl, config='c', batch_size=bs,
                       accumulative_counts=acc, images_per_step=bs * acc, warmup=1, steps=1,
                       variant=variant, baseline=baseline)
        c.img_per_s, c.s_per_image = ips, 1 / ips
        return c

    cases = [case('ours', 'ours', 1, 2, 26.0), case('stock', 'stock', 1, 2, 4.3),
             case('ours_batch2', 'ours', 2, 1, 28.0), case('stock_batch2', 'stock', 2, 1, 8.5),
             case('ours_infer', 'ours', 1, 1, 70.0, 'infer'),
             case('stock_infer', 'stock', 1, 1, 20.0, 'infer'),
             case('safe_all', 'ours', 1, 2, 30.0, variant='x'),
             case('ours_infer_b8', 'ours', 8, 1, 120.0, 'infer'),
             case('stock_infer_b8', 'stock', 8, 1, 100.0, 'infer'),
             case('compiled_infer', 'ours', 8, 1, 150.0, 'infer', 'y', 'ours_infer_b8')]
    cases[0].warmup_losses, cases[1].warmup_losses = [8.0, 1.0], [9.0, 9.0]
    cases[6].warmup_losses = [8.5, 1.0, 7.0]  # more warm-up steps: the first 2 compared
    ratios = compute_ratios(cases)
    assert ratios['train_vs_stock'] == pytest.approx(26 / 4.3)
    assert ratios['accumulation_overhead'] == pytest.approx(28 / 26)
    assert ratios['stock_accumulation_overhead'] == pytest.approx(8.5 / 4.3)
    assert ratios['safe_all_vs_ours'] == pytest.approx(30 / 26)
    assert ratios['infer_b8_vs_stock'] == pytest.approx(1.2)
    assert ratios['compiled_infer_vs_ours_infer_b8'] == pytest.approx(1.25)
    targets = check_targets(cases, ratios, dict(gpu='NVIDIA H100 80GB HBM3'))
    assert targets['applies'] and targets['train_met'] and targets['infer_met']
    assert targets['accumulation_overhead_met'] and targets['best_train_case'] == 'safe_all'
    assert targets['best_infer_case'] == 'compiled_infer' and targets['best_infer_met']
    targets = check_targets(cases[:2], compute_ratios(cases[:2]), dict(gpu=None))
    assert not targets['applies'] and not targets['accumulation_overhead_met']
    report = dict(environment=dict(gpu=None, torch='t', msda_path='PyTorch'),
                  options=dict(config='c'), cases=[dataclasses.asdict(c) for c in cases],
                  ratios=ratios, targets=targets)
    table = format_table(report)
    assert '6.05x vs stock' in table and '1.15x vs ours' in table
    assert '1.25x vs ours_infer_b8' in table
    # stock normalises its loss otherwise: only ours and its variants are compared
    assert 'loss summed over the first 2 optimizer steps (fp32 variants match ours up to float ' \
        'rounding): ours 9, safe_all 9.5 (+5.6e-02)' in table


def test_profile_summary_counts_launches_syncs_and_gpu_time():
    import types

    import torch
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(key, count, device_type=cpu, self_cpu=0.0, self_device=0.0):
        return types.SimpleNamespace(key=key, count=count, device_type=device_type,
                                     self_cpu_time_total=self_cpu,
                                     self_device_time_total=self_device)

    events = [ev('cudaLaunchKernel', 8000, self_cpu=40e3), ev('cuLaunchKernelEx', 500),
              ev('cudaStreamSynchronize', 60, self_cpu=5e3), ev('cudaMemcpyAsync', 90),
              ev('aten::mm', 400, self_cpu=20e3, self_device=30e3),
              ev('sm90_gemm_kernel', 400, cuda, self_device=30e3),
              ev('elementwise_kernel', 3000, cuda, self_device=20e3)]
    prof = types.SimpleNamespace(key_averages=lambda: events)
    p = summarize_profile(prof, wall=0.5, micro_batches=2, top=3)
    assert p['kernel_launches_per_micro_batch'] == 4250 and p['aten_ops_per_micro_batch'] == 200
    assert p['syncs_per_micro_batch'] == 30 and p['memcpy_calls_per_micro_batch'] == 45
    assert p['gpu_kernel_s'] == pytest.approx(0.05)
    assert p['gpu_busy_fraction'] == pytest.approx(0.1)
    assert [o['name'] for o in p['top_host_ops']] == ['cudaLaunchKernel', 'aten::mm',
                                                      'cudaStreamSynchronize']
    assert summarize_profile(prof, 0.5, 2, device='cpu')['gpu_busy_fraction'] is None


def test_cudagraph_skips_are_recorded_with_their_reasons():
    """A compiled case reports the graphs inductor ran without the CUDA graphs the mode asked
    for, and the distinct reasons it logged: inductor's own counter and log, driven by a real
    compile with mode='reduce-overhead' (on a CPU it may count the graph as skipped, silently)
    and by inductor's skip function as a GPU run calls it; skips from before the case are not
    counted."""
    import torch
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter
    result = CaseResult(name='torch_compile_cudagraphs', kind='train', implementation='ours',
                        config='c', batch_size=1, accumulative_counts=2, images_per_step=2,
                        warmup=1, steps=1, variant='torch_compile_cudagraphs')
    counter = torch._dynamo.utils.counters['inductor']
    counter['cudagraph_skips'] += 5  # earlier ones: not this case's
    with cudagraph_skips_recorded(result):
        compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1, mode='reduce-overhead')
        assert torch.allclose(compiled(torch.ones(3)), torch.sin(torch.ones(3)) * 2 + 1)
        for reason in ('mutated inputs (2 instances)', 'mutated inputs (2 instances)',
                       'CPU device (primals_1)'):
            log_cudagraph_skip_and_bump_counter(f'skipping cudagraphs due to {reason}')
    torch._dynamo.reset()
    # the 3 logged here, and the compiled graph where the torch version counts it as skipped on a
    # CPU (2.13 at once, 2.11 at times later); not the 5 from before the case
    assert result.cudagraph_skips in (3, 4)
    assert result.cudagraph_skip_reasons == ['skipping cudagraphs due to mutated inputs (2 '
                                             'instances)', 'skipping cudagraphs due to CPU '
                                             'device (primals_1)']
    untouched = dataclasses.replace(result, cudagraph_skips=0, cudagraph_skip_reasons=[])
    with cudagraph_skips_recorded(untouched, enabled=False):
        log_cudagraph_skip_and_bump_counter('skipping cudagraphs due to something else')
    assert untouched.cudagraph_skips == 0 and untouched.cudagraph_skip_reasons == []
    # a reason logged without a skip (e.g. many distinct sizes recorded) is still reported
    warned = dataclasses.replace(result, name='w', cudagraph_skips=0,
                                 cudagraph_skip_reasons=['many distinct sizes'])
    report = dict(environment=dict(gpu=None, torch='t', msda_path='PyTorch'),
                  options=dict(config='c'), cases=[dataclasses.asdict(result),
                                                   dataclasses.asdict(warned)],
                  ratios=compute_ratios([result]),
                  targets=check_targets([result], compute_ratios([result]), dict(gpu=None)))
    assert (f'torch_compile_cudagraphs: {result.cudagraph_skips} compiled graph(s) ran without '
            'CUDA graphs; inductor logged: skipping cudagraphs due to mutated inputs (2 '
            'instances) | skipping '
            'cudagraphs due to CPU device (primals_1)') in format_table(report)
    assert ('w: 0 compiled graph(s) ran without CUDA graphs; inductor logged: many distinct sizes'
            in format_table(report))
