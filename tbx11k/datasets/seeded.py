"""Per-sample seeded data pipelines (see :mod:`tbx11k.datasets.samplers`)."""
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed ``random``, ``numpy`` and torch's CPU generator, restoring their state afterwards.

    Args:
        seed (int): The seed inside the block.

    Yields:
        None: Inside the block.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededSampleMixin:
    """Accept ``(index, seed)`` from a seeded sampler and run the pipeline under that seed.

    Augmentation then depends on the sample's position in the epoch only, never on which worker
    or rank loads it. Plain integer indices behave as usual.
    """

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, (tuple, list)):
            index, seed = idx
            with isolated_rng(int(seed)):
                return super().__getitem__(int(index))
        return super().__getitem__(idx)
