"""The GPU self-check of the mmcv kernel fallback, run on the CPU with fake kernels."""
import pytest

import mmcv.ops.multi_scale_deform_attn as msda_module

from tbx11k.benchmark.kernel_check import compare_with_kernels
from tbx11k.compat import mmcv_cuda_fallback as fb


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    fb.reset_state()
    monkeypatch.setattr(fb._State, 'mode', 'auto')
    yield
    fb.reset_state()


def test_compare_with_kernels_logic_with_fake_kernels(monkeypatch):
    """The GPU self-check, run on the CPU with the PyTorch paths standing in for the kernels."""
    assert 'skipped' in compare_with_kernels('cpu')

    class PyTorchAsKernel:
        @staticmethod
        def apply(value, shapes, start, loc, weights, step):
            return msda_module.multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)

    monkeypatch.setattr(fb, '_ORIGINAL_MSDA_FUNCTION', PyTorchAsKernel)
    monkeypatch.setattr(fb, '_ORIGINAL_SIGMOID_FOCAL_LOSS', fb.sigmoid_focal_loss_pytorch)
    result = compare_with_kernels('cpu', force=True)
    assert result['ok'] is True
    assert result['msda_out'] == 0 and result['focal_grad'] == 0
    assert 0 < result['msda_bf16_out'] < 5e-2
    # the compiled path's custom op (its PyTorch branch here) against the same "kernel"
    assert result['msda_op_out'] == result['msda_op_grad_value'] == 0
    assert 0 < result['msda_op_bf16_out'] < 5e-2
    assert set(result) == {'ok', 'focal_loss', 'focal_grad'} | {
        f'msda_{b}{n}' for b in ('', 'bf16_', 'op_', 'op_bf16_')
        for n in ('out', 'grad_value', 'grad_loc', 'grad_weights')}
