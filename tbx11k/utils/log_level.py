"""Logging helpers."""
import contextlib
import logging
from typing import Iterator

from mmengine.logging import MMLogger


@contextlib.contextmanager
def current_logger_level(level: int = logging.WARNING) -> Iterator[None]:
    """mmengine's current logger at ``level`` inside the block, its own level again after it.

    E.g. to keep out the per-tensor reports of ``init_weights`` or of a ``paramwise_cfg``.

    Args:
        level (int): The logging level inside the block. Defaults to ``logging.WARNING``.

    Yields:
        None: Inside the block.
    """
    logger = MMLogger.get_current_instance()
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
