"""The GPU self-check of BatchedLossDINOHead against mmdet's DINOHead, run on the CPU."""
import pytest

import tbx11k.models.batched_loss_dino_head as head_module
from tbx11k.benchmark.batched_loss_check import compare_with_stock_head


@pytest.mark.slow
def test_device_check_used_by_the_gpu_benchmark_passes_on_cpu(monkeypatch):
    """``compare_with_stock_head`` is what tools/analysis_tools/benchmark.py runs on the GPU; on
    the CPU it must
    find the heads equal, and a broken head must make it say so."""
    result = compare_with_stock_head('cpu', batches=((0, ), (2, 5)))
    assert result['equal'] and result['same_keys'], result
    assert result['max_loss_rel_difference'] < 1e-5 and result['max_grad_rel_difference'] < 1e-5
    # the CPU is deterministic: the stock head run twice gives the same numbers
    assert result['stock_rerun_loss_rel_difference'] == 0
    assert result['stock_rerun_grad_rel_difference'] == 0
    monkeypatch.setattr(head_module, '_EPS', 0.5)  # normalisers off by half a box
    broken = compare_with_stock_head('cpu', batches=((2, 5), ))
    assert not broken['equal'] and broken['max_loss_rel_difference'] > 1e-3, broken
