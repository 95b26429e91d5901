"""torch.compile-d DINO (model.torch_compile) gives eager's losses, gradients and predictions."""
import copy
import types

import pytest
import torch
import torch._inductor.config

from mmcv.ops.multi_scale_deform_attn import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attn_pytorch,
)

from tbx11k.benchmark.op_count import count_launches
from tbx11k.models import compiled_dino
from tbx11k.models.compiled_dino import (
    COMPILE_PARTS,
    TraceableMultiScaleDeformableAttention,
    compile_dino,
    make_attention_traceable,
    ms_deform_attn,
    without_cudagraphs,
)
from tbx11k.testing import build_tiny_dino, random_batch

SHAPES = torch.tensor([[6, 8], [3, 4], [2, 2]])
START = torch.cat([SHAPES.new_zeros(1), (SHAPES[:, 0] * SHAPES[:, 1]).cumsum(0)[:-1]])


def msda_inputs(seed: int = 0, queries: int = 7, heads: int = 2, dims: int = 4, points: int = 3):
    g = torch.Generator().manual_seed(seed)
    num_value = int((SHAPES[:, 0] * SHAPES[:, 1]).sum())
    return (torch.randn(2, num_value, heads, dims, generator=g),
            torch.rand(2, queries, heads, len(SHAPES), points, 2, generator=g) * 1.2 - 0.1,
            torch.rand(2, queries, heads, len(SHAPES), points, generator=g).softmax(-1))


def grads_of(fn, inputs, grad_out):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in leaves]


def test_custom_op_equals_mmcv_pytorch_path_and_passes_opcheck():
    inputs = msda_inputs()
    grad_out = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1))
    ours = grads_of(lambda v, loc, w: ms_deform_attn(v, SHAPES, START, loc, w, 64), inputs,
                    grad_out)
    mmcv = grads_of(lambda v, loc, w: multi_scale_deformable_attn_pytorch(v, SHAPES, loc, w),
                    inputs, grad_out)
    for a, b in zip(ours, mmcv):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    value, loc, weights = (t.requires_grad_() for t in msda_inputs(2))
    torch.library.opcheck(ms_deform_attn, (value, SHAPES, START, loc, weights, 64))


def test_kernel_branch_casts_and_fills_the_gradients(monkeypatch):
    """The CUDA-kernel branch, with a stand-in for mmcv's ext module (same signatures: forward
    returns, backward writes into zeroed buffers): bf16 goes through the kernel in float32."""
    calls = []

    def forward(value, shapes, start, loc, weights, im2col_step):
        calls.append(('forward', value.dtype, loc.dtype, im2col_step))
        return multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)

    def backward(value, shapes, start, loc, weights, grad_output, grad_value, grad_loc,
                 grad_weights, im2col_step):
        calls.append(('backward', value.dtype, grad_output.dtype, im2col_step))
        assert not (grad_value.any() or grad_loc.any() or grad_weights.any())
        leaves = [t.detach().requires_grad_() for t in (value, loc, weights)]
        with compiled_dino._autograd_inside_custom_op():  # runs below autograd, as the op's
            out = multi_scale_deformable_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
        for buffer, grad in zip((grad_value, grad_loc, grad_weights),
                                torch.autograd.grad(out, leaves, grad_output)):
            buffer.copy_(grad)

    monkeypatch.setattr(compiled_dino, '_use_kernel', lambda value: True)
    monkeypatch.setattr(compiled_dino, '_ext', lambda: types.SimpleNamespace(
        ms_deform_attn_forward=forward, ms_deform_attn_backward=backward))
    inputs = msda_inputs(3)
    grad_out = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(4))
    reference = grads_of(lambda v, loc, w: multi_scale_deformable_attn_pytorch(v, SHAPES, loc, w),
                         inputs, grad_out)
    kernel = grads_of(lambda v, loc, w: ms_deform_attn(v, SHAPES, START, loc, w, 32), inputs,
                      grad_out)
    for a, b in zip(kernel, reference):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert calls == [('forward', torch.float32, torch.float32, 32),
                     ('backward', torch.float32, torch.float32, 32)]
    calls.clear()
    bf16 = grads_of(lambda v, loc, w: ms_deform_attn(v.bfloat16(), SHAPES, START, loc, w, 32),
                    inputs, grad_out.bfloat16())
    assert bf16[0].dtype == torch.bfloat16 and bf16[1].dtype == torch.float32
    assert [c[:2] for c in calls] == [('forward', torch.float32), ('backward', torch.float32)]
    assert torch.allclose(bf16[0].float(), reference[0], rtol=0.05, atol=0.05)


@pytest.mark.parametrize('ref_dim', [2, 4])
def test_traceable_attention_equals_mmcv(ref_dim):
    torch.manual_seed(0)
    mmcv = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=len(SHAPES),
                                         num_points=3, batch_first=True, dropout=0.0)
    mmcv.init_weights()
    ours = copy.deepcopy(mmcv)
    ours.__class__ = TraceableMultiScaleDeformableAttention
    num_value = int((SHAPES[:, 0] * SHAPES[:, 1]).sum())
    g = torch.Generator().manual_seed(5)
    query, value = torch.randn(2, 7, 16, generator=g), torch.randn(2, num_value, 16, generator=g)
    ref = torch.rand(2, 7, len(SHAPES), ref_dim, generator=g)
    mask = torch.zeros(2, num_value, dtype=torch.bool)
    mask[1, -5:] = True
    results = []
    for module in (mmcv, ours):
        module.zero_grad()
        out = module(query, value=value, query_pos=torch.ones_like(query), key_padding_mask=mask,
                     reference_points=ref, spatial_shapes=SHAPES, level_start_index=START)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in module.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_config_settings_and_bad_ones():
    assert not any(type(m).__name__.startswith('Compiled')
                   for m in build_tiny_dino(torch_compile=False).modules())
    model = build_tiny_dino(torch_compile=dict(parts=('neck', 'bbox_head'), mode='default'))
    assert sorted(type(m).__name__ for m in model.modules()
                  if type(m).__name__.startswith('Compiled')) == [
                      'CompiledBatchedLossDINOHead', 'CompiledChannelMapper']
    assert type(model.encoder.layers[0].self_attn) is MultiScaleDeformableAttention
    for setting, error, message in (
            ('reduce-overhead', TypeError, 'must be True, False, None or a dict'),
            (dict(part=['neck']), ValueError, "unknown keys \\['part'\\]; known: parts, "),
            (dict(parts='encoder'), ValueError, 'must be a list of names'),
            (dict(parts=['encoder', 'head']), ValueError,
             "unknown parts to compile \\['head'\\]")):
        with pytest.raises(error, match=message):
            build_tiny_dino(torch_compile=setting)
    with pytest.raises(ValueError, match='compiled already'):
        compile_dino(model, parts=['neck'])
    # the loss computation: only with the batched head; skipped by default without it
    model = build_tiny_dino(torch_compile=dict(parts=['losses']))
    assert type(model.bbox_head).compiled_methods == ('image_match_costs', 'loss_terms')
    with pytest.raises(ValueError, match="part 'losses' needs model.bbox_head.type="):
        build_tiny_dino('DINOHead', torch_compile=dict(parts=['losses']))
    done = compile_dino(build_tiny_dino('DINOHead'))
    assert 'losses' not in done['parts'] and 'bbox_head' in done['parts']
    # the two-stage proposals: only where the detector says they are traceable
    with pytest.raises(ValueError, match="part 'proposals' needs a detector with traceable"):
        compile_dino(types.SimpleNamespace(bbox_head=None), parts=['proposals'])
    model = build_tiny_dino(torch_compile=dict(parts=['proposals']))
    assert type(model).compiled_methods == ('masked_memory_and_proposals', )


def losses_and_grads(model, inputs, samples):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the denoising noise
    losses = model.loss(inputs, samples)
    loss, log_vars = model.parse_losses(losses)
    loss.backward()
    return log_vars, {n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None}


def sampling_points_off_pixel_centres(model, seed: int = 7) -> None:
    """Nudge the deformable attention's sampling-offset biases by up to 0.01 (same for both models
    once the state dict is copied). mmdet's initialisation puts the first decoder layer's
    sampling points exactly on pixel centres (grid-aligned proposals, offsets of whole steps),
    where bilinear sampling's gradient jumps: a last-bit rounding difference between compiled and
    eager (seen with AVX-512 kernels) then moves that layer's sampling-offset gradients by ~1 %
    while everything else agrees to 1e-6."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('sampling_offsets.bias'):
                param.add_(torch.rand(param.shape, generator=g) * 0.02 - 0.01)


@pytest.fixture
def fused_kernels_profiled():
    """Inductor's fused CPU kernels visible to the profiler (count_launches), for this test only
    (monkeypatch's undo would hide the option from inductor for the rest of the process)."""
    with torch._inductor.config.patch({'cpp.enable_kernel_profile': True}):
        yield


def eager_and_compiled():
    """The tiny model eager (sampling points nudged) and with every part compiled
    (torch_compile=True), the same weights."""
    eager = build_tiny_dino()
    sampling_points_off_pixel_centres(eager)
    compiled = build_tiny_dino(torch_compile=True)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def test_compiled_dino_trains_as_eager(fused_kernels_profiled):
    """All parts compiled (torch_compile=True): the same losses and gradients as eager for two
    batches with other box counts (the second one recompiles the parts whose sizes follow the
    number of boxes, with dynamic shapes), fewer kernel launches and an unchanged state dict. Two
    images each: a third image would recompile every part (105 C++ kernels instead of 52, 70 s
    instead of 49 s on an idle 2-core CPU, 2026-12-07) for no more code of ours."""
    eager, compiled = eager_and_compiled()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert type(compiled.encoder.layers[0].self_attn) is TraceableMultiScaleDeformableAttention
    assert all(type(getattr(compiled, part)).__name__.startswith('Compiled')
               for part in COMPILE_PARTS if part not in ('encoder', 'proposals', 'losses'))
    assert type(compiled.bbox_head).compiled_methods == ('forward', 'image_match_costs',
                                                         'loss_terms')
    assert type(compiled).compiled_methods == ('masked_memory_and_proposals', )
    for boxes in ([3, 1], [2, 5]):
        inputs, samples = random_batch(boxes)
        (ref_logs, ref_grads), (logs, grads) = (losses_and_grads(m, inputs, samples)
                                                for m in (eager, compiled))
        assert ref_logs.keys() == logs.keys()
        for key in ref_logs:
            assert float(logs[key]) == pytest.approx(float(ref_logs[key]), rel=1e-5, abs=1e-6), key
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            assert torch.allclose(grads[name], grad, rtol=1e-4,
                                  atol=1e-5 * float(grad.abs().max()) + 1e-9), name

    make_attention_traceable(eager)  # bit-identical (test above): MSDA counted as the kernel
    launches = [count_launches(m, dict(inputs=inputs, data_samples=samples))
                for m in (eager, compiled)]
    assert launches[0]['compiled_region_ops'] == launches[0]['fused_kernels'] == 0
    assert launches[1]['compiled_region_ops'] > 0 and launches[1]['fused_kernels'] > 0
    assert launches[1]['msda_kernels'] == launches[0]['msda_kernels'] == 18
    assert launches[1]['total'] < 0.85 * launches[0]['total']
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_compiled_dino_predicts_as_eager_and_a_deep_copy_runs_its_own_weights():
    """Compiled (all parts), the predictions are eager's; a deep copy (mmengine's EMA model) with
    other weights, run after the original compiled its inference graphs, predicts with its own
    weights."""
    eager, compiled = eager_and_compiled()
    make_attention_traceable(eager)
    inputs, samples = random_batch([2, 3], seed=7)
    ema_like = copy.deepcopy(compiled).eval()
    reference = copy.deepcopy(eager).eval()
    with torch.no_grad():
        for model in (ema_like, reference):  # other weights than the training models'
            for p in model.parameters():
                p.mul_(0.9)
        predictions = [m.predict(inputs, copy.deepcopy(samples)) for m in
                       (eager.eval(), compiled.eval(), reference, ema_like)]
    for trained, trained_compiled, ref, ema in zip(*predictions):
        for got, expected in ((trained_compiled, trained), (ema, ref)):
            assert torch.allclose(got.pred_instances.scores, expected.pred_instances.scores,
                                  atol=1e-5)
            assert torch.allclose(got.pred_instances.bboxes, expected.pred_instances.bboxes,
                                  atol=1e-3)
        assert not torch.allclose(ema.pred_instances.scores, trained.pred_instances.scores,
                                  atol=1e-5)


def test_compiled_loss_terms_take_the_focal_formula_in_the_kernels_dtype():
    """Compiled, the loss terms give mmdet's FocalLoss one-hot targets (its PyTorch formula,
    traceable) and bf16 logits in float32, as the eager GPU path (mmcv's kernel) computes them."""
    model = build_tiny_dino()
    head = type(model.bbox_head)
    captured = []
    original = head.loss_terms

    def capture(self, *args):
        captured.append(args)
        return original(self, *args)

    head.loss_terms = capture
    try:
        torch.manual_seed(1)
        model.loss(*random_batch([3, 2]))
    finally:
        head.loss_terms = original
    args = list(captured[0])
    for i in (0, 2):  # decoder and encoder logits, as under bf16 autocast
        args[i] = args[i].detach().to(torch.bfloat16)
    got = torch.compile(head.loss_terms)(model.bbox_head, *args)
    expected = head.loss_terms(model.bbox_head, *[
        a.float() if i in (0, 2) else a for i, a in enumerate(args)])
    assert got[0].dtype == expected[0].dtype == torch.float32
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-5, atol=0)
    eager_bf16 = head.loss_terms(model.bbox_head, *args)[0]  # the CPU formula in bf16: coarser
    assert not torch.allclose(eager_bf16, expected[0], rtol=1e-5, atol=0)


def test_losses_never_under_cuda_graphs(monkeypatch):
    """mode='reduce-overhead' (CUDA graphs) for the model's parts, not for the losses: their
    sizes change with each micro-batch's GT counts and the loss terms outlive the micro-batch."""
    assert without_cudagraphs(dict(mode='reduce-overhead', dynamic=True)) == dict(dynamic=True)
    assert without_cudagraphs(dict(mode='max-autotune')) == dict(
        mode='max-autotune-no-cudagraphs')
    assert without_cudagraphs(dict(options={'triton.cudagraphs': True, 'x': 1})) == dict(
        options={'triton.cudagraphs': False, 'x': 1})
    assert without_cudagraphs(dict(mode='default')) == dict(mode='default')
    made = {}

    def record(cls, methods):
        made[cls.__name__] = methods
        return cls

    monkeypatch.setattr(compiled_dino, 'compiled_class', record)
    compile_dino(build_tiny_dino(), mode='reduce-overhead')
    assert made['BatchedLossDINOHead'] == dict(forward=dict(mode='reduce-overhead'),
                                               image_match_costs={}, loss_terms={})
    assert made['TokenGridDeformableDetrTransformerEncoder'] == dict(
        forward=dict(mode='reduce-overhead'))
    assert made['WindowNormalizedDINO'] == dict(
        masked_memory_and_proposals=dict(mode='reduce-overhead'))


def test_padded_denoising_queries_compile_decoder_and_head_once():
    """model.pad_denoising_queries: micro-batches of one image size with other GT counts reuse
    one static graph of the decoder and one of the head's branches (what CUDA graphs replay);
    unpadded, each denoising-query count is a graph of each. Dynamo's graphs counted (backend
    'eager': no code generation)."""
    from torch._dynamo.utils import counters
    graphs = {}
    for pad in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = build_tiny_dino(pad_denoising_queries=pad, torch_compile=dict(
            parts=['decoder', 'bbox_head'], backend='eager', dynamic=False))
        for boxes in ([1], [3], [0], [7]):  # 40, 36, 0 and 28 denoising queries
            losses_and_grads(model, *random_batch(boxes))
        graphs[pad] = counters['stats']['unique_graphs']
    torch._dynamo.reset()
    assert graphs == {False: 8, True: 2}
