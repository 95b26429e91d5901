"""The data of an optimizer step does not depend on how the effective batch is split."""
import pytest

from tbx11k.datasets.samplers import (
    AccumulationWindowBatchSampler,
    GlobalOrderSampler,
    split_window,
)


def steps(num_images, world_size, batch_size, acc, epoch=0, seed=7, skip=0):
    """Per optimizer step: the multiset of (index, seed) over all ranks, and per-rank shares."""
    out = []
    shares = []
    for rank in range(world_size):
        sampler = GlobalOrderSampler(range(num_images), shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        batch_sampler = AccumulationWindowBatchSampler(sampler, batch_size, acc, world_size, rank)
        if skip:
            batch_sampler.skip_next(skip)
        shares.append(list(batch_sampler))
        assert len(batch_sampler) == -(-num_images // (world_size * batch_size * acc))
    for k in range(len(shares[0])):
        out.append(sorted(item for rank_shares in shares for item in rank_shares[k]))
    return out, shares


@pytest.mark.parametrize('num_images', [1, 2, 7, 10, 13])
@pytest.mark.parametrize('epoch', [0, 3])
def test_same_pairs_in_same_steps_for_1gpu_acc2_and_2gpu(num_images, epoch):
    one_gpu, _ = steps(num_images, 1, 1, 2, epoch)
    two_gpu, _ = steps(num_images, 2, 1, 1, epoch)
    four = steps(num_images, 2, 2, 1, epoch)[0], steps(num_images, 1, 1, 4, epoch)[0]
    assert one_gpu == two_gpu
    assert four[0] == four[1]


def test_every_image_every_epoch_and_padding_repeats_the_start():
    order, _ = steps(7, 1, 1, 2)
    indices = [i for step in order for i, _ in step]
    assert len(indices) == 8 and set(indices) == set(range(7))  # 7 images + 1 repeat
    sampler = GlobalOrderSampler(range(7), seed=7)
    first = next(iter(sampler))
    assert indices.count(first) == 2


def test_windows_never_straddle_epochs_and_epochs_reshuffle():
    e0, _ = steps(9, 1, 1, 2, epoch=0)
    e1, _ = steps(9, 1, 1, 2, epoch=1)
    assert len(e0) == len(e1) == 5
    assert [i for s in e0 for i, _ in s] != [i for s in e1 for i, _ in s]


def test_sample_seeds_depend_on_position_not_rank():
    order, shares = steps(6, 2, 1, 1)
    seeds = [seed for step in order for _, seed in step]
    assert len(set(seeds)) == len(seeds)
    again, _ = steps(6, 1, 1, 2)
    assert order == again


def test_skip_resumes_mid_epoch():
    full, _ = steps(10, 1, 1, 2)
    rest, _ = steps(10, 1, 1, 2, skip=3)
    assert rest == full[3:]
    with pytest.raises(ValueError):
        sampler = AccumulationWindowBatchSampler(GlobalOrderSampler(range(4), seed=0), 1, 2, 1, 0)
        sampler.skip_next(9)


def test_sharding_sampler_is_refused():
    from mmengine.dataset import DefaultSampler
    with pytest.raises(TypeError, match='GlobalOrderSampler'):
        AccumulationWindowBatchSampler(DefaultSampler(range(4), seed=0), 1, 2)


def test_split_window():
    batch = dict(inputs=[1, 2, 3, 4], data_samples=['a', 'b', 'c', 'd'])
    assert split_window(batch, 2) == [dict(inputs=[1, 2], data_samples=['a', 'b']),
                                      dict(inputs=[3, 4], data_samples=['c', 'd'])]
    with pytest.raises(ValueError):
        split_window(batch, 3)
