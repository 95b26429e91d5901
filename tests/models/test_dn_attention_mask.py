"""The vectorised denoising attention mask and query collation equal mmdet's, in a constant number
of ops."""
import pytest
import torch
from mmengine.structures import InstanceData

from mmdet.models.layers import CdnQueryGenerator
from mmdet.structures import DetDataSample

from tbx11k.benchmark.op_count import OpCounter
from tbx11k.models.dn_attention_mask import (
    VectorizedDnMaskQueryGenerator,
    denoising_attention_mask,
    denoising_query_index,
    max_denoising_queries,
    padded_attention_mask,
)


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


@pytest.mark.parametrize('max_num_target', [0, 1, 3])
def test_padded_mask_hides_the_padding_and_keeps_the_rest(max_num_target):
    stock, _ = _generators(5)
    mask = stock.generate_dn_mask(max_num_target, stock.get_num_groups(max_num_target), 'cpu')
    total = mask.size(0)
    padded = padded_attention_mask(mask, 4)
    assert padded.dtype == torch.bool and padded.shape == (total + 4, total + 4)
    assert torch.equal(padded[:total, :total], mask)
    assert padded[:total, total:].all() and padded[total:, :total].all()  # nobody sees them
    assert torch.equal(padded[total:, total:], ~torch.eye(4, dtype=torch.bool))  # only themselves
    assert torch.equal(padded_attention_mask(mask, 0), mask)


def test_the_most_denoising_queries_dynamic_groups_make():
    stock, ours = _generators(30)
    bound = max_denoising_queries(ours)
    assert bound == max_denoising_queries(stock) == 200
    counts = {2 * n * stock.get_num_groups(n) for n in range(101)}
    assert max(counts) == bound and len(counts) > 10  # many shapes without padding
    static = CdnQueryGenerator(num_classes=3, embed_dims=8, num_matching_queries=30,
                               group_cfg=dict(dynamic=False, num_groups=5))
    assert max_denoising_queries(static) is None


def test_window_normalized_dino_uses_it():
    from tbx11k.testing import build_tiny_dino
    model = build_tiny_dino('BatchedLossDINOHead')
    assert type(model).__name__ == 'WindowNormalizedDINO'
    assert type(model.dn_query_generator) is VectorizedDnMaskQueryGenerator


def _samples(num_targets, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for n in num_targets:
        xy = torch.rand(n, 2, generator=generator) * 40
        wh = torch.rand(n, 2, generator=generator) * 20 + 1
        sample = DetDataSample(metainfo=dict(img_shape=(64, 80)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, 3, (n, ), generator=generator))
        samples.append(sample)
    return samples


@pytest.mark.parametrize('num_targets', [[5], [1], [3, 0, 4], [0, 2], [7, 7], [0], [120, 1]])
def test_same_queries_as_mmdet(num_targets):
    """The whole generator call (noise drawn from the same seed) gives mmdet's tensors."""
    stock, ours = _generators(30)
    ours.load_state_dict(stock.state_dict())
    samples = _samples(num_targets)
    results = []
    for generator in (stock, ours):
        torch.manual_seed(3)
        results.append(generator(samples))
    (s_label, s_bbox, s_mask, s_meta), (o_label, o_bbox, o_mask, o_meta) = results
    assert o_meta == s_meta
    for got, expected in ((o_label, s_label), (o_bbox, s_bbox), (o_mask, s_mask)):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert ours._num_targets is None  # the call's GT counts are not kept


@pytest.mark.parametrize('num_targets,num_groups', [([5], 20), ([3, 0, 4], 2), ([0, 0], 1),
                                                    ([2, 6, 1], 16)])
def test_collation_called_on_its_own(num_targets, num_groups):
    """Outside a generator call (no GT counts kept) it counts the targets from batch_idx."""
    stock, ours = _generators(30)
    total = sum(num_targets) * 2 * num_groups
    label_query, bbox_query = torch.randn(total, 8), torch.rand(total, 4)
    batch_idx = torch.cat([torch.full((n, ), i, dtype=torch.long)
                           for i, n in enumerate(num_targets)])
    expected = stock.collate_dn_queries(label_query, bbox_query, batch_idx, len(num_targets),
                                        num_groups)
    got = ours.collate_dn_queries(label_query, bbox_query, batch_idx, len(num_targets),
                                  num_groups)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    index = denoising_query_index(num_targets, num_groups)
    assert index.shape == (2, total) and index.dtype.name == 'int64'


def test_collation_ops_do_not_grow_with_the_groups():
    stock, ours = _generators(30)
    counts = {}
    for name, generator in (('stock', stock), ('ours', ours)):
        for max_num_target in (1, 50):  # 100 and 2 denoising groups
            samples = _samples([max_num_target])
            with OpCounter() as counted:
                generator(samples)
            counts[name, max_num_target] = (sum(counted.ops.values()),
                                            counted.total_syncs())
    assert counts['ours', 1] == counts['ours', 50]
    assert counts['stock', 1][0] - counts['ours', 1][0] > 300  # mask + collation per group
    assert counts['ours', 1][1] < counts['stock', 1][1]  # no per-image count reads
