"""The cached sine positional encoding equals mmdet's and is computed once per shape."""
import torch

from mmdet.models.layers import SinePositionalEncoding

from tbx11k.benchmark.op_count import OpCounter
from tbx11k.models.cached_positional_encoding import CACHE_SIZE, CachedSinePositionalEncoding
from tbx11k.testing import build_tiny_dino, random_batch

CFG = dict(num_feats=16, normalize=True, offset=0.0, temperature=20)


def test_same_encoding_as_mmdet_and_reused():
    stock, ours = SinePositionalEncoding(**CFG), CachedSinePositionalEncoding(**CFG)
    for shape in ((1, 8, 12, 10), (2, 8, 5, 7), (1, 4, 12, 10)):
        feat = torch.randn(shape)
        first = ours(None, input=feat)
        assert torch.equal(first, stock(None, input=feat))
        other = torch.randn(shape)
        with OpCounter() as counted:
            again = ours(None, input=other)
        assert again is first and sum(counted.ops.values()) == 0
    mask = torch.zeros(2, 6, 9, dtype=torch.bool)
    mask[1, :, 7:] = True  # padding: computed from the mask as in mmdet, not cached
    assert torch.equal(ours(mask), stock(mask))
    assert not torch.equal(ours(mask), ours(None, input=torch.zeros(2, 8, 6, 9)))


def test_inference_mode_results_are_not_used_for_training():
    ours = CachedSinePositionalEncoding(**CFG)
    feat = torch.zeros(1, 8, 4, 5)
    with torch.inference_mode():
        inferred = ours(None, input=feat)
    trained = ours(None, input=feat)
    assert inferred.is_inference() and not trained.is_inference()
    weight = torch.ones(1, requires_grad=True)
    (trained * weight).sum().backward()  # an inference tensor would raise here


def test_cache_is_bounded():
    ours = CachedSinePositionalEncoding(**CFG)
    for size in range(1, CACHE_SIZE + 10):
        ours(None, input=torch.zeros(1, 1, size, 3))
    assert len(ours._mask_free_cache) == CACHE_SIZE


def test_dino_losses_unchanged():
    model = build_tiny_dino('BatchedLossDINOHead')
    assert type(model.positional_encoding) is CachedSinePositionalEncoding
    inputs, samples = random_batch([3])
    for sample in samples:  # unpadded: the mask-free (cached) path
        sample.set_metainfo(dict(img_shape=(96, 96)))

    def losses():
        torch.manual_seed(1)  # the denoising noise
        return model.loss(inputs, samples)

    ours = [losses(), losses()]  # computes, then reuses the encoding
    assert len(model.positional_encoding._mask_free_cache) == 4  # one per level
    model.positional_encoding.__class__ = SinePositionalEncoding
    stock = losses()
    for got in ours:
        assert got.keys() == stock.keys()
        for key in stock:
            assert torch.equal(got[key], stock[key]), key
