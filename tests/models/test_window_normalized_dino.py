"""WindowNormalizedDINO: parse_losses gives mmengine's results in a constant number of ops;
pad_denoising_queries gives the unpadded losses and gradients with one decoder shape."""
import copy
import logging

import pytest
import torch
from mmengine.model import BaseModel

from tbx11k.benchmark.op_count import OpCounter
from tbx11k.models import window_normalized_dino
from tbx11k.testing import build_tiny_dino, losses_and_grads, random_batch


@pytest.fixture(scope='module')
def model():
    return build_tiny_dino()


def _parsed(model, parse, inputs, samples):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    losses = model.loss(inputs, samples)
    with OpCounter() as counted:
        loss, log_vars = parse(model, losses)
        loss.backward()
    assert log_vars['loss'] is loss
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), {k: v.detach() for k, v in log_vars.items()}, grads, counted


@pytest.mark.parametrize('num_boxes', [[3], [0, 2]])
def test_same_terms_and_gradients_as_mmengine(model, num_boxes):
    inputs, samples = random_batch(num_boxes)
    stock = _parsed(model, BaseModel.parse_losses, inputs, samples)
    ours = _parsed(model, type(model).parse_losses, inputs, samples)
    (s_loss, s_vars, s_grads, s_ops), (o_loss, o_vars, o_grads, o_ops) = stock, ours
    assert list(o_vars) == list(s_vars) and list(o_vars)[0] == 'loss'
    for key in list(s_vars)[1:]:
        assert o_vars[key].shape == s_vars[key].shape == ()
        assert torch.equal(o_vars[key], s_vars[key]), key
    assert torch.allclose(o_loss, s_loss, rtol=1e-6, atol=0)
    assert o_grads.keys() == s_grads.keys()
    for name in s_grads:  # each term's gradient is exactly 1: the same backward
        assert torch.equal(o_grads[name], s_grads[name]), name
    # parse + backward: the terms' means, the adds and their backward are gone
    num_terms = len(s_vars) - 1
    assert o_ops.total_launching_ops() <= s_ops.total_launching_ops() - 3 * num_terms + 3, (
        o_ops.total_launching_ops(), s_ops.total_launching_ops(), num_terms)


def test_other_values_as_mmengine(model):
    losses = dict(loss_a=torch.tensor([1.0, 3.0]), loss_b=[torch.tensor(2.0), torch.ones(3)],
                  acc=torch.tensor(0.5), loss_c=torch.tensor([4.0]))
    loss, log_vars = type(model).parse_losses(model, losses)
    expected_loss, expected = BaseModel.parse_losses(model, losses)
    assert list(log_vars) == list(expected) == ['loss', 'loss_a', 'loss_b', 'acc', 'loss_c']
    for key in expected:
        assert torch.equal(log_vars[key], expected[key]), key
    with pytest.raises(TypeError, match='loss_d is not a tensor'):
        type(model).parse_losses(model, dict(loss_d=1.0))
    assert type(model).parse_losses(model, dict(acc=torch.tensor(1.0)))[0] == 0
    # an empty list term is 0, as in mmengine
    loss, log_vars = type(model).parse_losses(model, dict(loss_a=[], loss_b=torch.tensor(2.0)))
    assert float(loss) == 2.0 and log_vars['loss_a'] == 0


def test_mixed_dtypes_as_mmengine(model):
    """AMP gives float16 / bfloat16 terms beside float32 ones: the stacked sum promotes as the
    chain of adds does, and each term still gets the gradient 1 in its own dtype."""
    for low in (torch.float16, torch.bfloat16):
        values = [torch.tensor(1.5, dtype=low), torch.tensor([2.25]), torch.tensor(0.5, dtype=low)]
        results = []
        for parse in (BaseModel.parse_losses, type(model).parse_losses):
            terms = [v.clone().requires_grad_() for v in values]
            loss, _ = parse(model, dict(loss_a=terms[0], loss_b=terms[1], loss_c=terms[2]))
            loss.backward()
            results.append((loss, [t.grad for t in terms]))
        (s_loss, s_grads), (o_loss, o_grads) = results
        assert o_loss.dtype == s_loss.dtype == torch.float32 and float(o_loss) == float(s_loss)
        for o, s_ in zip(o_grads, s_grads):
            assert o.dtype == s_.dtype and torch.equal(o, s_)


@pytest.mark.slow
def test_padded_denoising_queries_train_as_unpadded(monkeypatch):
    """pad_denoising_queries: the decoder and the head's branches get num_queries + the bound
    whatever the GT counts (no boxes, one image or two with unequal counts), the losses and
    gradients stay the unpadded ones up to float rounding; beyond an int bound a micro-batch
    runs unpadded, with one warning; inference is untouched."""
    plain = build_tiny_dino()
    padded = build_tiny_dino(pad_denoising_queries=True)
    padded.load_state_dict(plain.state_dict())
    bound = 2 * plain.dn_query_generator.num_dn_queries
    assert padded.padded_denoising_queries == bound
    seen, head_seen = [], []
    padded.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs['query'].shape[1]), with_kwargs=True)
    padded.bbox_head.register_forward_pre_hook(
        lambda module, args: head_seen.append(args[0].shape[2]))
    num_dn = []
    for boxes in ([0], [3], [2, 5], [0, 4], [7], [1]):
        inputs, samples = random_batch(boxes)
        (ref_logs, ref_grads), (logs, grads) = (losses_and_grads(m, inputs, samples)
                                                for m in (plain, padded))
        num_dn.append(plain.dn_query_generator.get_num_groups(max(boxes)) * 2 * max(boxes))
        assert list(logs) == list(ref_logs)
        for key, value in ref_logs.items():
            assert float(logs[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), \
                (boxes, key)
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            assert torch.allclose(grads[name], grad, rtol=1e-4,
                                  atol=1e-6 * float(grad.abs().max()) + 1e-12), (boxes, name)
    assert len(set(num_dn)) >= 4  # the unpadded decoder saw as many shapes
    assert seen == head_seen == [plain.num_queries + bound] * len(num_dn)

    padded.eval()
    plain.eval()
    inputs, samples = random_batch([2, 1])
    with torch.no_grad():
        for a, b in zip(plain.predict(inputs, samples), padded.predict(inputs, samples)):
            assert torch.equal(a.pred_instances.bboxes, b.pred_instances.bboxes)
    assert seen[-1] == plain.num_queries

    small = build_tiny_dino(pad_denoising_queries=30)
    small.load_state_dict(plain.state_dict())
    plain.train()
    seen.clear()
    small.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs['query'].shape[1]), with_kwargs=True)
    logged = []
    monkeypatch.setattr(window_normalized_dino, 'print_log',
                        lambda message, **kwargs: logged.append((message, kwargs['level'])))
    for boxes in ([5], [7], [1]):  # 40, 28 and 40 denoising queries (20 per 2 x targets)
        inputs, samples = random_batch(boxes)
        (ref_logs, _), (logs, _) = (losses_and_grads(m, inputs, samples)
                                    for m in (plain, small))
        for key, value in ref_logs.items():
            assert float(logs[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    assert seen == [plain.num_queries + 40, plain.num_queries + 30, plain.num_queries + 40]
    assert len(logged) == 1 and logged[0][1] == logging.WARNING
    assert 'has 40 denoising queries, more than pad_denoising_queries pads to (30)' \
        in logged[0][0]


@pytest.mark.slow
def test_pad_denoising_queries_settings():
    assert build_tiny_dino().padded_denoising_queries is None
    assert not build_tiny_dino().bbox_head._forward_hooks
    padded = build_tiny_dino(pad_denoising_queries=True)
    ema_like = copy.deepcopy(padded)  # mmengine's EMA model: its head hook is its own
    assert [hook.__self__ for hook in ema_like.bbox_head._forward_hooks.values()] == [ema_like]
    assert build_tiny_dino(pad_denoising_queries=64).padded_denoising_queries == 64
    assert build_tiny_dino(pad_denoising_queries=1).padded_denoising_queries == 1  # not True
    with pytest.raises(ValueError, match='needs dynamic denoising groups'):
        build_tiny_dino(pad_denoising_queries=True,
                        dn_cfg=dict(group_cfg=dict(dynamic=False, num_groups=3)))
    for bad in (0, -5, 'yes', 2.5):
        with pytest.raises(ValueError, match='must be True, False or a positive int'):
            build_tiny_dino(pad_denoising_queries=bad)
