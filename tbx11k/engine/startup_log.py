"""What a training log starts with: the layout report first, mmengine's start-up noise later or at
DEBUG, and a true statement about batch norms under gradient accumulation."""
import logging
from typing import List, Optional, Tuple

import torch
from torch.nn.modules.batchnorm import _BatchNorm

#: mmengine's start-up records logged after the layout report (its config dump and the hooks'
#: order; each is hundreds of lines): the beginnings of their messages
DEFERRED_MESSAGES = ('Config:\n', 'Hooks will be executed in the following order')
#: per-parameter reports of mmengine's optimizer constructor, logged at DEBUG (one line per
#: frozen tensor, three per parameter with a paramwise setting)
DEBUG_MESSAGES = ('is skipped since its requires_grad=False', 'paramwise_options -- ')
#: mmengine's warning, given for any BatchNorm layer, frozen or not; answered by
#: :func:`batch_norm_accumulation_note`
MMENGINE_BATCH_NORM_WARNING = 'Gradient accumulative may slightly decrease performance'


class StartupLogFilter(logging.Filter):
    """A filter on a Runner's logger that orders and sorts mmengine's start-up records.

    - mmengine's config dump and hook-order listing are held back until :meth:`release` (the
      Runner releases them after the layout report), then logged unchanged.
    - The optimizer constructor's per-parameter records (``... is skipped since its
      requires_grad=False``, ``paramwise_options -- ...``) are logged at DEBUG: shown with
      ``log_level='DEBUG'``, not in an INFO log.
    - mmengine's "Gradient accumulative may slightly decrease performance because the model has
      BatchNorm layers" is dropped: :func:`batch_norm_accumulation_note` says whether it applies.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.held: List[logging.LogRecord] = []
        self.holding = True

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if MMENGINE_BATCH_NORM_WARNING in message:
            return False
        if any(noise in message for noise in DEBUG_MESSAGES):
            record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
            return True  # the handlers' levels decide (INFO: not shown)
        if self.holding and message.startswith(DEFERRED_MESSAGES):
            self.held.append(record)
            return False
        return True

    def release(self) -> None:
        """Log the held records (in their order) and hold nothing from now on."""
        self.holding = False
        held, self.held = self.held, []
        for record in held:
            self.logger.handle(record)


def batch_norms_in_training(model: torch.nn.Module) -> Tuple[List[str], List[str]]:
    """(all BatchNorm layers, those in training mode once ``model.train()`` is called) by name.

    A BatchNorm layer in training mode normalises with the statistics of its batch; one that the
    model keeps in eval mode while training (mmdet backbones with ``norm_eval=True``, frozen
    stages) uses fixed running statistics. The modules' modes are restored afterwards.
    """
    modes = {module: module.training for module in model.modules()}
    try:
        model.train()
        norms = [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
        return [name for name, _ in norms], [name for name, m in norms if m.training]
    finally:
        for module, mode in modes.items():
            module.training = mode


def batch_norm_accumulation_note(model: torch.nn.Module, accumulative_counts: int,
                                 images_per_micro_batch: int) -> Optional[Tuple[int, str]]:
    """(log level, message) on batch norms under gradient accumulation; None without
    accumulation or without BatchNorm layers.

    Frozen batch norms (eval mode while training) compute the same for an image whichever batch
    it is in, so accumulating micro-batches is exactly the larger batch: INFO. Batch norms that
    train normalise each micro-batch with its own statistics: WARNING, naming them.
    """
    if accumulative_counts <= 1:
        return None
    names, training = batch_norms_in_training(model)
    if not names:
        return None
    if not training:
        return logging.INFO, (
            f'Gradient accumulation is exact here: the {len(names)} BatchNorm layers of the '
            'model are frozen (eval mode while training, e.g. the backbone\'s norm_eval=True), '
            'so they normalise with fixed statistics and a micro-batch computes what it would '
            'in the whole batch (mmengine\'s warning that accumulation with BatchNorm layers may '
            'decrease performance does not apply)')
    examples = ', '.join(training[:3]) + (', ...' if len(training) > 3 else '')
    return logging.WARNING, (
        f'{len(training)} of the {len(names)} BatchNorm layers train in batch-statistics mode '
        f'({examples}): each normalises a micro-batch of {images_per_micro_batch} image(s) with '
        f'its own statistics, so accumulating {accumulative_counts} micro-batches is not the '
        f'same training as one batch of {accumulative_counts * images_per_micro_batch} images. '
        'Freeze them (norm_eval=True in the backbone) for exact accumulation.')
