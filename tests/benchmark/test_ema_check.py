"""The GPU self-check of ForeachExponentialMovingAverage, run on the CPU."""
from tbx11k.benchmark.ema_check import compare_with_mmengine_ema


def test_equal_to_mmengine_ema_bit_for_bit():
    result = compare_with_mmengine_ema('cpu', steps=4)
    assert result == dict(equal=True, max_abs_difference=0.0)
