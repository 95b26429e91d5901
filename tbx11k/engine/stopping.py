"""How hooks stop a run early with an exit status for ``tools/train.py``.

A hook calls :func:`request_stop` at an optimizer-step boundary: the train loop stops after the
current step (``train_loop.stop_training``), the remaining ``after_train``/``after_run`` hooks run
as usual, and ``tools/train.py`` logs the reason and exits with the request's status
(:mod:`tbx11k.engine.exit_codes`). The first request of a run wins; later ones are logged.
"""
from typing import NamedTuple, Optional

from mmengine.logging import print_log


class StopRequest(NamedTuple):
    exit_code: int
    reason: str


class NonFiniteTraining(RuntimeError):
    """Weights became non-finite: the run stops before anything is saved."""


def request_stop(runner, exit_code: int, reason: str) -> None:
    """Ask the training loop to stop after this optimizer step with ``exit_code``.

    The first request wins; a later one with another status is logged.

    Args:
        runner (Runner): The runner.
        exit_code (int): The exit status of tools/train.py (``tbx11k.engine.exit_codes``).
        reason (str): Why, for the log.
    """
    loop = runner.train_loop
    current: Optional[StopRequest] = getattr(loop, 'stop_request', None)
    if current is None:
        loop.stop_request = StopRequest(int(exit_code), reason)
    elif current.exit_code != exit_code:
        print_log(f'Also asked to stop with status {exit_code}: {reason}', logger='current')
    loop.stop_training = True


def stop_request(runner) -> Optional[StopRequest]:
    """The run's stop request.

    Args:
        runner (Runner): The runner.

    Returns:
        StopRequest | None: The request, None if the run went to its end.
    """
    loop = getattr(runner, '_train_loop', None)
    return getattr(loop, 'stop_request', None)
