"""Samplers that make the data of every optimizer step independent of how it is split.

One optimizer step consumes a *window* of ``E = world_size * batch_size * accumulative_counts``
images. :class:`GlobalOrderSampler` yields the same epoch order on every rank;
:class:`AccumulationWindowBatchSampler` cuts that order into windows and gives each rank its share.
Window ``k`` holds positions ``k*E ... k*E+E-1`` of the epoch order, and micro-batch ``j`` of rank
``r`` holds positions ``k*E + j*W*b + r*b + (0..b-1)``. So 1 GPU x 1 image x 2 accumulation steps
and
2 GPUs x 1 image see the same image pairs in the same optimizer steps. The order is padded to a
multiple of ``E`` by repeating its start (as ``DefaultSampler`` pads for DDP), so windows never
straddle an epoch end and no image is dropped.

Every index is yielded as ``(dataset_index, sample_seed)``: the seed is a function of
(seed, epoch, position) only, and :class:`~tbx11k.datasets.seeded.SeededSampleMixin` runs the
pipeline under it, so augmentation does not depend on worker ids or ranks either.
"""
from typing import Iterator, List, Optional, Sized, Tuple

import numpy as np
import torch
from mmengine.dataset.sampler import DefaultSampler
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import BatchSampler, Sampler

from mmdet.registry import DATA_SAMPLERS

SeededIndex = Tuple[int, int]

#: stream tags mixed into :func:`derive_seed` so data and model randomness never share a seed
DATA_STREAM = 0
MODEL_STREAM = 1


def derive_seed(*entropy: int) -> int:
    """A 31-bit seed derived deterministically from integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(e) & 0xFFFFFFFF for e in entropy]).generate_state(1)[0]
               & 0x7FFFFFFF)


@DATA_SAMPLERS.register_module()
class GlobalOrderSampler(Sampler):
    """The epoch's global sample order, identical on every rank (not sharded).

    Args:
        dataset (Sized): The dataset (only its length is used).
        shuffle (bool): Shuffle with ``seed + epoch`` like ``DefaultSampler``. Defaults to
            True.
        seed (int, optional): The base seed; None draws one and syncs it across ranks.
            Defaults to None.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: Optional[int] = None) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return iter(torch.randperm(n, generator=g).tolist())
        return iter(range(n))

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


@DATA_SAMPLERS.register_module()
class AccumulationWindowBatchSampler(BatchSampler):
    """Yields, per optimizer step, this rank's ``batch_size * accumulative_counts`` seeded indices.

    ``accumulative_counts`` is filled in by
    :class:`~tbx11k.engine.loops.AccumulationEpochBasedTrainLoop` from
    ``optim_wrapper.accumulative_counts`` (one source of truth).

    Args:
        sampler (Sampler): A :class:`GlobalOrderSampler` (or any sampler giving the same order
            on all ranks).
        batch_size (int): Images per micro-batch per rank.
        accumulative_counts (int): Micro-batches per optimizer step. Defaults to 1.
        world_size (int, optional): Defaults to None (the current process group's).
        rank (int, optional): Defaults to None (this process's rank).
    """

    def __init__(self,
                 sampler: Sampler,
                 batch_size: int,
                 accumulative_counts: int = 1,
                 world_size: Optional[int] = None,
                 rank: Optional[int] = None) -> None:
        if isinstance(sampler, DefaultSampler) or not hasattr(sampler, 'set_epoch'):
            raise TypeError(
                'AccumulationWindowBatchSampler needs the same order on every rank: use '
                "sampler=dict(type='GlobalOrderSampler'), not "
                f'{type(sampler).__name__} (which shards the data per rank).')
        if batch_size < 1 or accumulative_counts < 1:
            raise ValueError(f'batch_size ({batch_size}) and accumulative_counts '
                             f'({accumulative_counts}) must be >= 1')
        dist_rank, dist_world = get_dist_info()
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.accumulative_counts = int(accumulative_counts)
        self.world_size = dist_world if world_size is None else int(world_size)
        self.rank = dist_rank if rank is None else int(rank)
        self.drop_last = False
        self._skip_windows = 0

    @property
    def window_size(self) -> int:
        """Images per optimizer step over all ranks."""
        return self.world_size * self.batch_size * self.accumulative_counts

    def skip_next(self, windows: int) -> None:
        """Start the next pass ``windows`` optimizer steps into the epoch (mid-epoch resume).

        Args:
            windows (int): Windows to skip, 0 to ``len(self)``.

        Raises:
            ValueError: For a number outside that range.
        """
        if not 0 <= windows <= len(self):
            raise ValueError(f'cannot skip {windows} of {len(self)} windows')
        self._skip_windows = int(windows)

    def _epoch_order(self) -> List[int]:
        order = list(iter(self.sampler))
        if not order:
            raise ValueError('the training dataset is empty')
        pad = -len(order) % self.window_size
        while pad:  # repeat the start, like DefaultSampler's DDP padding
            order += order[:pad]
            pad = -len(order) % self.window_size
        return order

    def positions_of(self, window: int, micro_batch: int) -> range:
        """Epoch-order positions of this rank's micro-batch ``micro_batch`` in ``window``.

        Args:
            window (int): The window (optimizer step) within the epoch.
            micro_batch (int): The micro-batch within the window.

        Returns:
            range: The positions.
        """
        first = (window * self.window_size + micro_batch * self.world_size * self.batch_size
                 + self.rank * self.batch_size)
        return range(first, first + self.batch_size)

    def __iter__(self) -> Iterator[List[SeededIndex]]:
        order = self._epoch_order()
        epoch = getattr(self.sampler, 'epoch', 0)
        base_seed = getattr(self.sampler, 'seed', 0)
        start, self._skip_windows = self._skip_windows, 0
        for window in range(start, len(order) // self.window_size):
            share = []
            for j in range(self.accumulative_counts):
                for pos in self.positions_of(window, j):
                    share.append((order[pos], derive_seed(base_seed, epoch, pos, DATA_STREAM)))
            yield share

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.window_size)


def split_window(data_batch: dict, accumulative_counts: int) -> List[dict]:
    """Cut a collated window into its micro-batches.

    Args:
        data_batch (dict): The window (``inputs``/``data_samples`` lists).
        accumulative_counts (int): Micro-batches per window.

    Returns:
        List[dict]: The micro-batches, in order.
    """
    size = len(data_batch['inputs'])
    if size % accumulative_counts:
        raise ValueError(f'a window of {size} samples cannot be split into '
                         f'{accumulative_counts} equal micro-batches')
    step = size // accumulative_counts
    return [{key: value[i:i + step] for key, value in data_batch.items()}
            for i in range(0, size, step)]


def micro_batch_seed(base_seed: int, epoch: int, sampler: AccumulationWindowBatchSampler,
                     window: int, micro_batch: int) -> int:
    """Seed of the model's randomness (e.g. DINO's denoising noise) for one micro-batch.

    It depends on the micro-batch's first epoch-order position, so a micro-batch gets the same
    noise whether it runs as an accumulation step or on another rank.

    Args:
        base_seed (int): The run's seed.
        epoch (int): The epoch.
        sampler (AccumulationWindowBatchSampler): The training batch sampler.
        window (int): The window (optimizer step) within the epoch.
        micro_batch (int): The micro-batch within the window.

    Returns:
        int: A 31-bit seed.
    """
    return derive_seed(base_seed, epoch, sampler.positions_of(window, micro_batch)[0], MODEL_STREAM)
