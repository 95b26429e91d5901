"""WindowNormalizedDINO(verify_loss_counts=False): the same losses without the count check."""
import pytest
import torch
from mmengine.config import Config

from tbx11k.models import LossCountMismatch, LossWindow, window_reduce_mean
from tbx11k.models.window_loss_normalization import KIND_MODULES
from tbx11k.testing import TINY_1GPU, build_tiny_dino


def test_unverified_reduce_mean_skips_only_the_check():
    window = LossWindow(window_mean=dict(match=2.5, dn=10.0), local=dict(match=3.0, dn=12.0))
    module = KIND_MODULES['match']
    with window_reduce_mean(window, verify=False):
        out = module.reduce_mean(torch.tensor([99.0]))  # a wrong local count is not read
    assert out.tolist() == [2.5]
    with window_reduce_mean(window):  # default: verified
        assert module.reduce_mean(torch.tensor([3.0])).tolist() == [2.5]
        with pytest.raises(LossCountMismatch):
            module.reduce_mean(torch.tensor([99.0]))


def _batch(num_boxes):
    from mmengine.structures import InstanceData

    from mmdet.structures import DetDataSample
    g = torch.Generator().manual_seed(num_boxes)
    samples = []
    for n in num_boxes if isinstance(num_boxes, list) else [num_boxes]:
        sample = DetDataSample(metainfo=dict(img_shape=(96, 96), pad_shape=(96, 96),
                                             batch_input_shape=(96, 96), scale_factor=(1., 1.)))
        xy = torch.rand(n, 2, generator=g) * 60
        wh = torch.rand(n, 2, generator=g) * 30 + 5
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, 2, (n,), generator=g))
        samples.append(sample)
    return torch.randn(len(samples), 3, 96, 96, generator=g), samples


def test_default_is_verified_and_configs_keep_it():
    assert 'verify_loss_counts' not in Config.fromfile(TINY_1GPU).model
    assert build_tiny_dino().verify_loss_counts is True


def test_same_losses_with_and_without_the_check():
    losses = {}
    for verify in (True, False):
        model = build_tiny_dino(verify_loss_counts=verify)
        inputs, samples = _batch(3)
        local = model.loss_counts(samples)
        model.set_loss_window([c * 0.75 for c in local], local)  # a window of 2 micro-batches
        torch.manual_seed(1)  # the denoising noise
        losses[verify] = model.loss(inputs, samples)
        model.set_loss_window(None)
    assert losses[True].keys() == losses[False].keys()
    for key in losses[True]:
        assert torch.equal(losses[True][key], losses[False][key]), key


def test_unverified_model_does_not_read_the_local_count():
    model = build_tiny_dino(verify_loss_counts=False)
    inputs, samples = _batch(2)
    local = model.loss_counts(samples)
    model.set_loss_window(local, [c + 5 for c in local])  # a wrong prediction goes unnoticed
    model.loss(inputs, samples)
    model = build_tiny_dino()
    model.set_loss_window(local, [c + 5 for c in local])
    with pytest.raises(LossCountMismatch):
        model.loss(inputs, samples)
