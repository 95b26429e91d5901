"""The mmcv CUDA-kernel fallback (tbx11k/compat/mmcv_cuda_fallback.py), on the CPU with mocks."""
import inspect

import pytest
import torch

import mmcv.ops.multi_scale_deform_attn as msda_module
import mmdet.models.losses.focal_loss as focal_module

from tbx11k.compat import mmcv_cuda_fallback as fb

CUDA = torch.device('cuda', 0)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    fb.reset_state()
    monkeypatch.setattr(fb._State, 'mode', 'auto')
    messages = []
    monkeypatch.setattr(fb, 'print_log', lambda msg, **kw: messages.append((msg, kw)))
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *a, **k: None)
    yield messages
    fb.reset_state()


def msda_inputs(bs=1, heads=2, dim=4, queries=5, levels=2, points=2, dtype=torch.float32):
    shapes = torch.tensor([[4, 4], [2, 2]])[:levels]
    num_value = int((shapes[:, 0] * shapes[:, 1]).sum())
    g = torch.Generator().manual_seed(0)
    value = torch.randn(bs, num_value, heads, dim, generator=g).to(dtype)
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    loc = torch.rand(bs, queries, heads, levels, points, 2, generator=g)
    weights = torch.rand(bs, queries, heads, levels, points, generator=g).softmax(-1)
    return value, shapes, start, loc, weights


def test_installed_where_mmcv_and_mmdet_look_the_names_up():
    import tbx11k  # noqa: F401
    assert fb.installed()
    assert msda_module.MultiScaleDeformableAttnFunction is fb.MultiScaleDeformableAttnDispatch
    assert focal_module.sigmoid_focal_loss is fb.sigmoid_focal_loss_dispatch
    # mmcv 2.1.0 / mmdet 3.3.0 resolve these module globals at call time: if an upgrade changes
    # that, the dispatchers are bypassed and this test says so
    forward = inspect.getsource(msda_module.MultiScaleDeformableAttention.forward)
    assert 'MultiScaleDeformableAttnFunction.apply(' in forward
    assert 'calculate_loss_func = sigmoid_focal_loss' in inspect.getsource(
        focal_module.FocalLoss.forward)


def test_cpu_never_probes_and_reports_pytorch(monkeypatch):
    monkeypatch.setattr(fb, 'check_kernels', lambda device: pytest.fail('probed on the CPU'))
    assert not fb.msda_uses_kernel(torch.device('cpu'))
    assert fb.describe_msda_path('cpu').startswith('PyTorch')
    assert fb.focal_uses_kernel(torch.zeros(2, 2))  # CPU tensors: mmdet never calls the kernel


def test_mmcv_without_cuda_falls_back_and_warns_once(monkeypatch, fresh_state):
    monkeypatch.setattr(fb, 'mmcv_compiled_with_cuda', lambda: False)
    probes = []
    monkeypatch.setattr(fb, 'PROBES', {k: lambda d, k=k: probes.append(k) for k in fb.PROBES})
    for _ in range(3):
        assert not fb.msda_uses_kernel(CUDA)
        assert not fb.check_kernel(fb.KERNEL_FOCAL, CUDA)[0]
    assert probes == []  # no CUDA call at all when mmcv has no CUDA build
    assert len(fresh_state) == 1
    message, kwargs = fresh_state[0]
    assert 'mmcv was compiled without CUDA' in message
    assert 'multi_scale_deformable_attn_pytorch' in message and kwargs['level'] == 30
    assert 'compiled without CUDA' in fb.describe_msda_path(CUDA)


def test_failing_test_call_falls_back_with_its_error(monkeypatch, fresh_state):
    monkeypatch.setattr(fb, 'mmcv_compiled_with_cuda', lambda: True)

    def no_image(device):
        raise RuntimeError('CUDA error: no kernel image is available for execution on the device')

    monkeypatch.setattr(fb, 'PROBES', {fb.KERNEL_MSDA: no_image,
                                       fb.KERNEL_FOCAL: lambda device: None})
    assert not fb.msda_uses_kernel(CUDA)
    assert fb.check_kernel(fb.KERNEL_FOCAL, CUDA) == (True, 'mmcv CUDA kernel')
    assert len(fresh_state) == 1 and 'no kernel image' in fresh_state[0][0]
    assert fb.msda_uses_kernel(CUDA) is False and len(fresh_state) == 1


def test_working_kernels_are_used_silently(monkeypatch, fresh_state):
    monkeypatch.setattr(fb, 'mmcv_compiled_with_cuda', lambda: True)
    monkeypatch.setattr(fb, 'PROBES', {k: (lambda device: None) for k in fb.PROBES})
    assert fb.msda_uses_kernel(CUDA)
    assert fb.describe_msda_path(CUDA) == 'mmcv CUDA kernel (ms_deform_attn)'
    assert fresh_state == []


def test_switched_off_kernels_need_no_probe_and_warn_once(monkeypatch, fresh_state):
    monkeypatch.setattr(fb, 'PROBES', {k: (lambda d: pytest.fail('probed')) for k in fb.PROBES})
    monkeypatch.setattr(fb, '_SWITCHED_OFF', {k: v for k, v in fb._SWITCHED_OFF.items()})
    fb.set_kernel_mode('off')
    for _ in range(3):
        assert not fb.msda_uses_kernel(CUDA)
        assert not fb.check_kernel(fb.KERNEL_FOCAL, CUDA)[0]
    assert 'switched off' in fb.describe_msda_path(CUDA)
    assert len(fresh_state) == 1 and 'TBX11K_MMCV_KERNELS=off' in fresh_state[0][0]
    with pytest.raises(ValueError):
        fb.set_kernel_mode('cuda-please')


class FakeKernel:
    calls = []

    @classmethod
    def apply(cls, value, shapes, start, loc, weights, step):
        cls.calls.append((value.dtype, loc.dtype, weights.dtype, step))
        return torch.full((value.shape[0], loc.shape[1], value.shape[2] * value.shape[3]), 7.0,
                          dtype=value.dtype)


def test_dispatch_pytorch_path_equals_mmcv_cpu_path(monkeypatch):
    monkeypatch.setattr(fb, 'msda_uses_kernel', lambda device: False)
    monkeypatch.setattr(fb, '_ORIGINAL_MSDA_FUNCTION', FakeKernel)
    FakeKernel.calls = []
    value, shapes, start, loc, weights = msda_inputs()
    out = fb.MultiScaleDeformableAttnDispatch.apply(value, shapes, start, loc, weights, 64)
    expected = msda_module.multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    assert FakeKernel.calls == []
    assert torch.equal(out, expected)


def test_dispatch_kernel_path_and_bf16(monkeypatch):
    monkeypatch.setattr(fb, 'msda_uses_kernel', lambda device: True)
    monkeypatch.setattr(fb, '_ORIGINAL_MSDA_FUNCTION', FakeKernel)
    FakeKernel.calls = []
    value, shapes, start, loc, weights = msda_inputs()
    out = fb.MultiScaleDeformableAttnDispatch.apply(value, shapes, start, loc, weights, 64)
    assert FakeKernel.calls == [(torch.float32, torch.float32, torch.float32, 64)]
    assert out.dtype == torch.float32 and (out == 7).all()
    # bf16 (autocast): the kernel has no bf16 build -> computed in float32, returned as bf16
    FakeKernel.calls = []
    out = fb.MultiScaleDeformableAttnDispatch.apply(value.bfloat16(), shapes, start, loc,
                                                    weights, 64)
    assert FakeKernel.calls == [(torch.float32, torch.float32, torch.float32, 64)]
    assert out.dtype == torch.bfloat16


def test_whole_attention_module_through_the_dispatcher(monkeypatch):
    """mmcv's MultiScaleDeformableAttention on a 'GPU' (mocked) falls back to the same numbers."""
    from mmcv.ops import MultiScaleDeformableAttention
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2, num_points=2,
                                         batch_first=True).eval()
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])
    query = torch.randn(1, 5, 16)
    value = torch.randn(1, 20, 16)
    ref = torch.rand(1, 5, 2, 2)
    kwargs = dict(value=value, reference_points=ref, spatial_shapes=shapes,
                  level_start_index=start)
    expected = attn(query, **kwargs)  # the CPU path of mmcv itself
    # pretend to be on a GPU without kernels: mmcv takes its CUDA branch -> our dispatcher
    monkeypatch.setattr(msda_module, 'IS_CUDA_AVAILABLE', True)
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda self: True))
    asked = []
    monkeypatch.setattr(fb, 'msda_uses_kernel', lambda device: asked.append(device) or False)
    assert torch.equal(attn(query, **kwargs), expected)
    assert len(asked) == 1  # mmcv's CUDA branch went through the dispatcher


def test_focal_fallback_equals_mmdet_cpu_branch(monkeypatch):
    from mmdet.models.losses import FocalLoss
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(12, 2, generator=g)
    target = torch.tensor([0, 1, 2, 2, 2, 0, 1, 2, 2, 2, 2, 2])  # 2 = background
    weight = torch.rand(12, generator=g)
    loss = FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.75, loss_weight=2.0)
    expected = loss(pred, target, weight, avg_factor=3.0)  # mmdet's CPU branch
    monkeypatch.setattr(fb, 'focal_uses_kernel', lambda pred: False)
    got = focal_module.sigmoid_focal_loss(pred, target, weight, gamma=2.0, alpha=0.75,
                                          reduction='mean', avg_factor=3.0) * 2.0
    assert torch.allclose(got, expected, rtol=0, atol=1e-7)


def test_focal_kernel_path_gets_float_for_bf16(monkeypatch):
    seen = []

    def fake(pred, target, weight=None, **kw):
        seen.append(pred.dtype)
        return pred.sum()

    monkeypatch.setattr(fb, '_ORIGINAL_SIGMOID_FOCAL_LOSS', fake)
    monkeypatch.setattr(fb, 'focal_uses_kernel', lambda pred: True)
    fb.sigmoid_focal_loss_dispatch(torch.zeros(2, 2, dtype=torch.bfloat16), torch.tensor([0, 2]))
    fb.sigmoid_focal_loss_dispatch(torch.zeros(2, 2, dtype=torch.float16), torch.tensor([0, 2]))
    assert seen == [torch.float32, torch.float16]
