"""The vectorised denoising attention mask equals mmdet's, in a constant number of ops."""
import pytest
import torch

from mmdet.models.layers import CdnQueryGenerator

from tbx11k.models.dn_attention_mask import (VectorizedDnMaskQueryGenerator,
                                             denoising_attention_mask)
from tbx11k.op_count import OpCounter


def _generators(num_matching_queries):
    cfg = dict(num_classes=3, embed_dims=8, num_matching_queries=num_matching_queries,
               label_noise_scale=0.5, box_noise_scale=1.0,
               group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100))
    return CdnQueryGenerator(**cfg), VectorizedDnMaskQueryGenerator(**cfg)


@pytest.mark.parametrize('num_matching_queries', [0, 1, 7, 30])
def test_same_mask_as_mmdet(num_matching_queries):
    stock, ours = _generators(num_matching_queries)
    for max_num_target in (0, 1, 2, 3, 5, 17, 100, 150):
        num_groups = stock.get_num_groups(max_num_target)
        expected = stock.generate_dn_mask(max_num_target, num_groups, device='cpu')
        got = ours.generate_dn_mask(max_num_target, num_groups, device='cpu')
        assert got.dtype == torch.bool and got.shape == expected.shape
        assert torch.equal(got, expected), (max_num_target, num_groups)
    for max_num_target, num_groups in ((2, 1), (3, 4), (1, 9)):  # static group counts too
        assert torch.equal(
            denoising_attention_mask(max_num_target, num_groups, num_matching_queries, 'cpu'),
            stock.generate_dn_mask(max_num_target, num_groups, device='cpu'))


def test_op_count_does_not_grow_with_the_groups():
    stock, ours = _generators(30)
    counts = {}
    for name, generator in (('stock', stock), ('ours', ours)):
        for max_num_target in (1, 50):  # 100 and 2 denoising groups
            with OpCounter() as counted:
                generator.generate_dn_mask(max_num_target,
                                           generator.get_num_groups(max_num_target), 'cpu')
            counts[name, max_num_target] = sum(counted.ops.values())
    assert counts['ours', 1] == counts['ours', 50] <= 12
    assert counts['stock', 1] > 300  # two slice assignments per group


def test_window_normalized_dino_uses_it():
    from tbx11k.models.batched_loss_check import build_tiny_dino
    model = build_tiny_dino('BatchedLossDINOHead')
    assert type(model).__name__ == 'WindowNormalizedDINO'
    assert type(model.dn_query_generator) is VectorizedDnMaskQueryGenerator
