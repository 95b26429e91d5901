"""BatchedLossDINOHead: stock DINOHead's losses and gradients with far fewer ops and host syncs."""
import numpy as np
import pytest
import torch

from tbx11k.testing import build_tiny_dino, random_batch

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5


def _pair(head=None, **overrides):
    """(stock, batched) tiny WindowNormalizedDINOs with the same weights."""
    stock = build_tiny_dino('DINOHead', head=head, **overrides)
    batched = build_tiny_dino('BatchedLossDINOHead', head=head, **overrides)
    batched.load_state_dict(stock.state_dict())
    return stock, batched


@pytest.fixture(scope='module')
def models():
    return _pair()


def losses_and_grads(model, inputs, samples, window=None):
    model.zero_grad(set_to_none=True)
    if window is not None:
        model.set_loss_window(*window)
    try:
        torch.manual_seed(1)  # the denoising noise
        losses = model.loss(inputs, samples)
    finally:
        model.set_loss_window(None)
    model.parse_losses(losses)[0].backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return {k: v.detach() for k, v in losses.items()}, grads


def _assert_same(stock, batched):
    """Same keys in the same order, values and gradients within the tolerances; the worst
    relative differences (losses, gradients)."""
    (la, ga), (lb, gb) = stock, batched
    assert list(la) == list(lb)
    worst_loss = 0.0
    for key in la:
        a, b = la[key], lb[key]
        assert a.numel() == b.numel() == 1, key
        a, b = a.double().reshape(()), b.double().reshape(())
        assert torch.isfinite(a), key
        diff = float((a - b).abs() / a.abs().clamp(min=1e-12)) if a != 0 else float(b.abs())
        assert diff < LOSS_RTOL, (key, float(a), float(b))
        worst_loss = max(worst_loss, diff)
    assert ga.keys() == gb.keys()
    scale = max(float(g.norm()) for g in ga.values() if g is not None)
    worst_grad = 0.0
    for name in ga:
        a, b = ga[name], gb[name]
        assert (a is None) == (b is None), name
        if a is None:
            continue
        diff = float((a - b).double().norm()) / max(float(a.double().norm()), 1e-6 * scale)
        assert diff < GRAD_RTOL, (name, diff)
        worst_grad = max(worst_grad, diff)
    return worst_loss, worst_grad


BATCHES = [[0], [1], [5], [3, 0], [2, 7], [0, 0]]


@pytest.mark.parametrize('num_boxes', BATCHES, ids=lambda c: 'boxes' + '_'.join(map(str, c)))
def test_same_losses_and_gradients_as_stock(models, num_boxes):
    stock, batched = models
    inputs, samples = random_batch(num_boxes)
    results = [losses_and_grads(m, inputs, samples) for m in (stock, batched)]
    _assert_same(*results)
    keys = list(results[0][0])
    assert {'loss_cls', 'd0.loss_iou', 'enc_loss_bbox', 'dn_loss_cls', 'd0.dn_loss_iou'} <= \
        set(keys)
    if sum(num_boxes):  # a real comparison: the box losses are not all zero
        assert float(results[0][0]['loss_bbox']) > 0 and float(results[0][0]['dn_loss_iou']) > 0


def test_configured_weights_and_costs_are_honoured():
    """Other loss weights, focal alpha/gamma and match-cost weights: still equal to stock."""
    head = dict(
        loss_cls=dict(alpha=0.4, gamma=1.5, loss_weight=1.7),
        loss_bbox=dict(loss_weight=3.0), loss_iou=dict(loss_weight=1.2, eps=1e-6),
        sync_cls_avg_factor=False)
    train_cfg = dict(assigner=dict(type='HungarianAssigner', match_costs=[
        dict(type='FocalLossCost', weight=1.0, alpha=0.3, gamma=1.0),
        dict(type='BBoxL1Cost', weight=2.0, box_format='xywh'),
        dict(type='IoUCost', iou_mode='iou', weight=4.0)]))
    stock, batched = _pair(head, train_cfg=train_cfg)
    assert batched.bbox_head.unsupported_reason() is None
    for num_boxes in ([4, 1], [0]):
        inputs, samples = random_batch(num_boxes, seed=3)
        _assert_same(*[losses_and_grads(m, inputs, samples) for m in (stock, batched)])


def test_matching_equals_hungarian_assigner_with_ties(models):
    """match_all_layers == HungarianAssigner per layer and image, also for exactly tied
    queries (where any bit of difference in the costs would change the result)."""
    from mmengine.structures import InstanceData

    from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
    head = models[1].bbox_head
    _, samples = random_batch([4, 0, 7, 30, 40], seed=5)  # more boxes than queries (30) too
    gts = [s.gt_instances for s in samples]
    metas = [s.metainfo for s in samples]
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(3, len(samples), 30, 2, generator=g)
    box = torch.rand(3, len(samples), 30, 4, generator=g) * 0.5 + 0.1
    cls[:, :, 1], box[:, :, 1] = cls[:, :, 0], box[:, :, 0]  # exact ties
    cls[:, :, 7], box[:, :, 7] = cls[:, :, 3], box[:, :, 3]
    matches = head.match_all_layers(cls, box, gts, metas)
    for s in range(3):
        for b, (gt, meta) in enumerate(zip(gts, metas)):
            h, w = meta['img_shape']
            preds = InstanceData(scores=cls[s, b], bboxes=bbox_cxcywh_to_xyxy(box[s, b]) *
                                 box.new_tensor([w, h, w, h]))
            gt_inds = head.assigner.assign(preds, gt, meta).gt_inds
            rows, cols = matches[s][b]
            expected = torch.zeros(30, dtype=torch.long)
            expected[torch.from_numpy(rows)] = torch.from_numpy(cols) + 1
            assert torch.equal(gt_inds, expected), (s, b)
            assert len(rows) == min(30, len(gt))


@pytest.mark.parametrize('num_boxes,scale', [([2, 0], 0.75), ([1], 0.5), ([0], 0.0)])
def test_same_under_window_loss_normalization(models, num_boxes, scale):
    """WindowNormalizedDINO's window normalisers (verified local counts) reach the batched
    losses exactly as the stock ones, including window means below 1 (clamped)."""
    stock, batched = models
    inputs, samples = random_batch(num_boxes, seed=7)
    local = stock.loss_counts(samples)
    window = ([c * scale + (0.5 if scale == 0 else 0) for c in local], local)
    assert stock.verify_loss_counts and batched.verify_loss_counts
    results = [losses_and_grads(m, inputs, samples, window) for m in (stock, batched)]
    _assert_same(*results)
    micro = losses_and_grads(batched, inputs, samples)
    if sum(num_boxes):  # the window normaliser changes the numbers
        assert not torch.allclose(micro[0]['dn_loss_bbox'], results[1][0]['dn_loss_bbox'])


def test_reduce_mean_once_per_kind_with_the_local_counts(models, monkeypatch):
    """The normalisers go through mmdet's two module-level reduce_mean names (what the window
    normalisation swaps), once per kind, with the local counts the window predicts."""
    from tbx11k.models import LossCountMismatch
    from tbx11k.models.window_loss_normalization import KIND_MODULES
    _, batched = models
    inputs, samples = random_batch([3, 1], seed=8)
    local = batched.loss_counts(samples)
    seen = {kind: [] for kind in KIND_MODULES}

    def spy(kind):
        def reduce_mean(tensor):
            seen[kind].append(tensor.reshape(-1).tolist())
            return tensor
        return reduce_mean

    for kind, module in KIND_MODULES.items():
        monkeypatch.setattr(module, 'reduce_mean', spy(kind))
    torch.manual_seed(1)
    batched.loss(inputs, samples)
    assert seen == dict(match=[[local[0]]], dn=[[local[1]]])
    monkeypatch.undo()
    batched.set_loss_window(local, [c + 1 for c in local])  # a wrong prediction is caught
    try:
        with pytest.raises(LossCountMismatch):
            batched.loss(inputs, samples)
    finally:
        batched.set_loss_window(None)


def _head_loss_inputs(model, inputs, samples):
    """The arguments DINO passes to bbox_head.loss, as fresh leaves (for head-only counts)."""
    captured = {}
    original = model.bbox_head.loss

    def capture(*args, **kwargs):
        captured['args'], captured['kwargs'] = args, kwargs
        raise StopIteration

    model.bbox_head.loss = capture
    try:
        with pytest.raises(StopIteration):
            torch.manual_seed(1)
            model.loss(inputs, samples)
    finally:
        model.bbox_head.loss = original
        del model.bbox_head.loss

    def leaf(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().clone().requires_grad_(True)
        if isinstance(x, (list, tuple)):
            return type(x)(leaf(v) for v in x)
        return x
    return leaf(captured['args']), {k: leaf(v) for k, v in captured['kwargs'].items()}


def _count_head(head, args, kwargs):
    from tbx11k.benchmark.op_count import OpCounter, counting_assignments
    counter = OpCounter()
    with counter, counter.counting_cpu_calls(), counting_assignments(counter):
        with counter.in_phase('head_loss'):
            losses = head.loss(*args, **kwargs)
            total = sum(v.sum() for v in losses.values())
        with counter.in_phase('backward'):
            total.backward()
    return counter


@pytest.mark.parametrize('num_boxes', [[3], [2, 0]])
def test_fewer_ops_and_host_syncs(models, num_boxes):
    """Head loss forward + backward (head-only, from the decoder outputs): at most 45% of stock's
    aten ops and 15% of its host syncs (measured on the tiny model, 2 decoder layers: 35% and
    9%; the full 6-layer config: see tools/analysis_tools/count_ops.py); one device-to-host copy in
    all."""
    stock, batched = models
    inputs, samples = random_batch(num_boxes, seed=9)
    args, kwargs = _head_loss_inputs(stock, inputs, samples)
    counts = {name: _count_head(m.bbox_head, args, kwargs)
              for name, m in (('stock', stock), ('batched', batched))}
    ops = {k: c.total_ops() for k, c in counts.items()}
    syncs = {k: c.total_syncs() for k, c in counts.items()}
    assert ops['batched'] <= 0.45 * ops['stock'], ops
    assert syncs['batched'] <= 0.15 * syncs['stock'], syncs
    to_cpu = {k: sum(s['to_cpu'] for s in c.syncs.values()) for k, c in counts.items()}
    sets = 2 + 1  # tiny config: 2 decoder layers + the encoder proposals
    with_gts = sum(1 for n in num_boxes if n)
    assert to_cpu == dict(stock=sets * with_gts, batched=1)
    assert counts['stock'].assignments == counts['batched'].assignments == sets * with_gts
    scalar_reads = sum(s['_local_scalar_dense'] for s in counts['batched'].syncs.values())
    assert scalar_reads <= 2, counts['batched'].syncs  # F.one_hot's range check (CPU focal loss)


def test_unsupported_config_falls_back_with_one_warning(monkeypatch):
    from tbx11k.models import batched_loss_dino_head as module
    messages = []
    monkeypatch.setattr(module, 'print_log', lambda msg, **kw: messages.append(msg))
    head = dict(loss_bbox=dict(type='SmoothL1Loss', beta=0.05, loss_weight=5.0))
    stock, batched = _pair(head)
    assert 'SmoothL1Loss' in batched.bbox_head.unsupported_reason()
    for num_boxes in ([2, 1], [3]):
        inputs, samples = random_batch(num_boxes, seed=11)
        (la, ga), (lb, gb) = [losses_and_grads(m, inputs, samples) for m in (stock, batched)]
        assert list(la) == list(lb)
        assert all(torch.equal(la[k], lb[k]) for k in la)  # the stock computation itself
        assert all((ga[n] is None and gb[n] is None) or torch.equal(ga[n], gb[n]) for n in ga)
    assert len(messages) == 1 and 'SmoothL1Loss' in messages[0], messages


def test_unsupported_reasons(models):
    from tbx11k.models import BatchedLossDINOHead
    head = models[1].bbox_head
    assert head.unsupported_reason() is None
    subclass = type('Custom', (BatchedLossDINOHead, ), {'get_dn_targets': lambda self: None})
    original = head.__class__
    head.__class__ = subclass
    try:
        assert 'overrides get_dn_targets' in head.unsupported_reason()
    finally:
        head.__class__ = original
    head.bg_cls_weight = 0.1
    try:
        assert 'bg_cls_weight' in head.unsupported_reason()
    finally:
        head.bg_cls_weight = 0
    assert np.isclose(head.loss_cls.alpha, 0.75)  # the project's focal alpha reaches the head


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.slow
def test_same_losses_under_autocast(dtype):
    """Mixed precision (autocast on the CPU here; AMP on a GPU): half-precision scores and boxes
    go through the batched matching and losses as through mmdet's, to half-precision rounding."""
    stock, batched = _pair()
    inputs, samples = random_batch([2, 5], seed=4)
    totals = []
    for model in (stock, batched):
        with torch.autocast('cpu', dtype=dtype):
            torch.manual_seed(1)
            losses = model.loss(inputs, samples)
        total = model.parse_losses(losses)[0]
        total.backward()
        assert torch.isfinite(total)
        totals.append(float(total))
    assert totals[1] == pytest.approx(totals[0], rel=2e-3)
