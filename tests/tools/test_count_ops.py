"""tools/analysis_tools/count_ops.py: aten ops and host syncs per phase of one micro-batch (tiny
config, CPU)."""
import json
import os.path as osp
import sys

import pytest

from tbx11k.benchmark.op_count import PHASES, SYNC_KINDS
from tbx11k.testing import REPO_ROOT, TINY_1GPU, run

COUNT_OPS = osp.join(REPO_ROOT, 'tools', 'analysis_tools', 'count_ops.py')


@pytest.mark.slow
def test_counts_of_stock_mmdet_the_stock_head_and_the_batched_head(tmp_path, synthetic_root):
    reports = {}
    for name, model, head, options in (
            ('mmdet', 'DINO', 'DINOHead', ['--stock']),
            ('DINOHead', 'WindowNormalizedDINO', 'DINOHead',
             ['--cfg-options', 'model.bbox_head.type=DINOHead']),
            ('BatchedLossDINOHead', 'WindowNormalizedDINO', 'BatchedLossDINOHead', [])):
        out = tmp_path / f'{name}.json'
        proc = run([sys.executable, COUNT_OPS, TINY_1GPU, '--data-root', str(synthetic_root),
                    '--num-images', '2', '--json', str(out)] + options, timeout=300)
        report = reports[name] = json.loads(out.read_text())
        assert report['model'] == model and report['head'] == head
        assert len(report['num_gts']) == 2 and min(report['num_gts']) >= 2
        assert list(report['ops']) == list(PHASES) and min(report['ops'].values()) > 0
        assert report['total_ops'] == sum(report['ops'].values())
        assert list(report['total_syncs']) == list(SYNC_KINDS)
        # 2 images x (2 decoder layers + encoder proposals), whatever the head
        assert report['linear_sum_assignment'] == 6
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f'{TINY_1GPU}: {model} / {head}, 2 image(s)')
        for phase, ops in report['ops'].items():
            row = next(line.split() for line in lines if line.startswith(phase + ' '))
            assert int(row[1]) == ops and int(row[-1]) == sum(report['syncs'][phase].values())
        total = next(line.split() for line in lines if line.startswith('total '))
        assert int(total[1]) == report['total_ops']
        assert 'linear_sum_assignment calls: 6' in proc.stdout
        step = report['optimizer_step']
        assert (f"optimizer step ({step['optimizer']}, {step['param_groups']} param groups, "
                f"{step['parameters']} tensors, as on a GPU): {step['ops']} aten ops, "
                f"{step['launching_ops']} launching kernels") in proc.stdout
    mmdet, stock, batched = reports['mmdet'], reports['DINOHead'], reports['BatchedLossDINOHead']
    for phase in ('backbone', 'neck', 'decoder', 'head_loss'):
        assert mmdet['ops'][phase] == stock['ops'][phase], phase  # same head, same layers
    # WindowNormalizedDINO: the encoder's reference points without per-level host reads, the
    # denoising queries and proposals in fewer ops (the positional encoding is only cached for
    # unpadded batches; these two images differ in shape), one stacked loss sum
    assert stock['ops']['encoder'] < mmdet['ops']['encoder']
    assert sum(stock['syncs']['encoder'].values()) < sum(mmdet['syncs']['encoder'].values())
    for phase in ('other', 'parse'):
        assert stock['ops'][phase] < mmdet['ops'][phase], phase
        assert sum(stock['syncs'][phase].values()) <= sum(mmdet['syncs'][phase].values()), phase
    for phase in ('backbone', 'neck', 'encoder', 'decoder', 'other', 'parse'):
        assert stock['ops'][phase] == batched['ops'][phase], phase  # only the head differs
    assert batched['ops']['head_loss'] < 0.5 * stock['ops']['head_loss']
    assert batched['ops']['backward'] < stock['ops']['backward']
    # batched: one cost copy to the host; from host: 2 index/count packs (non-blocking on a GPU),
    # per image the BBoxL1Cost factor and the bbox_overlaps eps, one eps in giou_loss; the 2
    # scalar reads are F.one_hot's range check in the CPU focal loss
    assert stock['syncs']['head_loss']['to_cpu'] == 6
    assert batched['syncs']['head_loss'] == dict(_local_scalar_dense=2, nonzero=0, unique=0,
                                                 to_cpu=1, from_host=2 + 2 * 2 + 1)
    assert sum(stock['syncs']['head_loss'].values()) > 10 * sum(  # measured 135 vs 10
        batched['syncs']['head_loss'].values())
    # the optimizer: mmengine's per-tensor param groups stepped one by one by torch's AdamW
    # (stock) or per learning rate by MergedGroupsAdamW (ours; measured 870 vs 20 launching ops)
    optimizers = {name: r['optimizer_step'] for name, r in reports.items()}
    assert optimizers['mmdet']['optimizer'] == 'AdamW'
    assert optimizers['BatchedLossDINOHead']['optimizer'] == 'MergedGroupsAdamW'
    assert len({(o['param_groups'], o['parameters']) for o in optimizers.values()}) == 1
    assert optimizers['mmdet']['param_groups'] == optimizers['mmdet']['parameters'] > 100
    assert optimizers['BatchedLossDINOHead']['launching_ops'] <= 30
    assert optimizers['mmdet']['launching_ops'] > 5 * optimizers['mmdet']['param_groups']


@pytest.mark.slow
def test_launches_of_stock_mmdet_and_ours(tmp_path, synthetic_root):
    """--launches: the kernel launches a GPU would see, the deformable attention as mmcv's CUDA
    kernel (tiny config: 3 attention modules x (2 forward + 4 backward) launches)."""
    reports = {}
    for name, options in (('stock', ['--stock']), ('ours', [])):
        out = tmp_path / f'{name}.json'
        proc = run([sys.executable, COUNT_OPS, TINY_1GPU, '--launches', '--data-root',
                    str(synthetic_root), '--json', str(out)] + options, timeout=300)
        report = reports[name] = json.loads(out.read_text())
        n = report['launches']
        assert n['msda_kernels'] == 18 and n['compiled_region_ops'] == n['fused_kernels'] == 0
        assert n['total'] == n['eager_ops'] + n['msda_kernels'] > 300
        assert f"kernel launches per micro-batch (estimate): {n['total']}" in proc.stdout
    assert reports['stock']['model'] == 'DINO' and reports['stock']['stock']
    assert reports['ours']['launches']['total'] < reports['stock']['launches']['total']
