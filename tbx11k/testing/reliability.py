"""Test helpers for the reliability features (preemption, atomic checkpoints, training health).

Importing this module registers two test-only hooks (configs list it in ``custom_imports``):

- :class:`InjectNaNHook` makes a loss term NaN at chosen optimizer steps (and ranks);
- :class:`SignalAtStepHook` sends the process a signal while a chosen optimizer step runs.

It also runs training subprocesses while watching their log (:class:`TrainProcess`), finds the
rank processes of ``torch.distributed.run`` and kills checkpoint writers at random points
(:func:`kill_during_writes`, run in its own process: it forks).
"""
import glob
import json
import os
import os.path as osp
import random
import re
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ..compat.torch_load import load_checkpoint_mmapped
from ._utils import REPO_ROOT, subprocess_env

STEP_LINE = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')


# ---- test-only hooks --------------------------------------------------------------------------
@HOOKS.register_module()
class InjectNaNHook(Hook):
    """Multiply loss term ``term`` by NaN in the given optimizer steps (1-based).

    Args:
        steps: optimizer steps to poison.
        term: the loss term (a key of the model's loss dict).
        ranks: ranks that poison their loss (None: all).
        micro_batches: which micro-batches of the step's accumulation window get the NaN.
    """

    priority = 'VERY_HIGH'

    def __init__(self, steps: Sequence[int], term: str = 'loss_cls',
                 ranks: Optional[Sequence[int]] = None, micro_batches: Sequence[int] = (0,)):
        self.steps = set(int(s) for s in steps)
        self.term = term
        self.ranks = None if ranks is None else set(ranks)
        self.micro_batches = set(micro_batches)

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 not in self.steps:
            return
        if self.ranks is not None and get_rank() not in self.ranks:
            return
        model = self._model(runner)
        original = type(model).loss
        calls = [0]

        def loss(batch_inputs, batch_data_samples):
            losses = original(model, batch_inputs, batch_data_samples)
            if calls[0] in self.micro_batches:
                losses[self.term] = losses[self.term] * float('nan')
            calls[0] += 1
            return losses

        model.loss = loss

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._model(runner).__dict__.pop('loss', None)


@HOOKS.register_module()
class SignalAtStepHook(Hook):
    """Send this process ``signal`` at the start of optimizer step ``step`` (1-based)."""

    priority = 'VERY_HIGH'

    def __init__(self, step: int, signal_name: str = 'SIGUSR1',
                 ranks: Optional[Sequence[int]] = None):
        self.step, self.signal_name = int(step), signal_name
        self.ranks = None if ranks is None else set(ranks)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 == self.step and (self.ranks is None or get_rank() in self.ranks):
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def derived_config(config: str, out_path: str, hooks: Sequence[Dict] = (),
                   **overrides) -> str:
    """Write ``config`` with ``hooks`` and ``overrides`` as one file.

    A hook of a type already in ``custom_hooks`` replaces it; others are appended.
    """
    cfg = Config.fromfile(config)
    cfg.custom_imports = dict(imports=['tbx11k', 'tbx11k.testing.reliability'],
                              allow_failed_imports=False)
    custom_hooks = [dict(h) for h in cfg.custom_hooks]
    for hook in hooks:
        same = [i for i, h in enumerate(custom_hooks) if h['type'] == hook['type']]
        if same:
            custom_hooks[same[0]] = dict(hook)
        else:
            custom_hooks.append(dict(hook))
    cfg.custom_hooks = custom_hooks
    cfg.merge_from_dict(overrides)
    cfg.dump(out_path)
    return out_path


# ---- training subprocesses --------------------------------------------------------------------
class TrainProcess:
    """A training subprocess whose log (stdout+stderr, to a file) can be watched.

    ``preloaded=True``: its ``python tools/X.py`` processes run in forks of the preloaded tool
    server (:mod:`.tool_server`), for runs that are not about a fresh process (no signal during
    start-up, no kill -9)."""

    def __init__(self, cmd: Sequence[str], log_path: str, preloaded: bool = False) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        launch, env = self.cmd, subprocess_env()
        if preloaded:
            from .tool_server import through_server
            launch, env = through_server(self.cmd, env, REPO_ROOT)
        self._log = open(log_path, 'w')
        self.proc = subprocess.Popen(launch, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=REPO_ROOT)

    def text(self) -> str:
        with open(self.log_path, errors='replace') as f:
            return f.read()

    def last_step(self) -> int:
        """The last optimizer step (1-based, whole run) logged so far (logger interval 1)."""
        matches = STEP_LINE.findall(self.text())
        if not matches:
            return 0
        epoch, i, n = (int(v) for v in matches[-1])
        return (epoch - 1) * n + i

    def wait_for(self, condition, timeout: float = 300, poll: float = 0.02) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f'{" ".join(self.cmd)} exited {self.proc.returncode} '
                                     f'before the awaited point\n{self.text()[-5000:]}')
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f'timeout waiting\n{self.text()[-5000:]}')
            time.sleep(poll)

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        self.wait_for(lambda: self.last_step() >= step, timeout)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def child_pids(pid: int) -> List[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    children = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.split('/')[2]))
    return children


def rank_pids(launcher_pid: int) -> Dict[int, int]:
    """{rank: pid} of the workers of a torch.distributed.run launcher."""
    ranks = {}
    for pid in child_pids(launcher_pid):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                env = dict(kv.split(b'=', 1) for kv in f.read().split(b'\0') if b'=' in kv)
        except OSError:
            continue
        if b'RANK' in env:
            ranks[int(env[b'RANK'])] = pid
    return ranks


# ---- comparisons ------------------------------------------------------------------------------
def max_abs_difference(a, b, path: str = '') -> float:
    """Max |a - b| over all tensors of two nested structures (same structure required)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        if torch.equal(a, b):
            return 0.0
        if a.is_floating_point():
            return float((a.double() - b.double()).abs().max())
        return 0.0 if torch.equal(a, b) else float('inf')
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        return max([max_abs_difference(a[k], b[k], f'{path}.{k}') for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        return max([max_abs_difference(x, y, f'{path}[{i}]')
                    for i, (x, y) in enumerate(zip(a, b))] or [0.0])
    return 0.0


def all_finite(checkpoint: Dict) -> bool:
    tensors = [v for key in ('state_dict', 'ema_state_dict')
               for v in (checkpoint.get(key) or {}).values()
               if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ---- kill -9 during checkpoint writes ----------------------------------------------------------
class _FakeRunner:
    """What CheckpointHook needs of a Runner; checkpoints hold one tensor filled with the step."""

    def __init__(self, work_dir: str, numel: int) -> None:
        from mmengine.logging import MessageHub, MMLogger
        self.work_dir = work_dir
        self.numel = numel
        self.message_hub = MessageHub.get_instance(f'kill_test_{os.getpid()}')
        self.logger = MMLogger.get_instance(f'kill_test_{os.getpid()}', log_level='ERROR')

    def save_checkpoint(self, out_dir, filename, file_client_args=None, save_optimizer=True,
                        save_param_scheduler=True, meta=None, by_epoch=True, backend_args=None,
                        **kwargs):
        from mmengine.runner.checkpoint import save_checkpoint
        meta = dict(meta or {})
        checkpoint = dict(meta=meta, state_dict={'w': torch.full((self.numel,),
                                                                 float(meta['iter']))},
                          message_hub=self.message_hub.state_dict())
        if save_optimizer:  # as Runner.save_checkpoint
            checkpoint['optimizer'] = dict(state={}, param_groups=[])
        save_checkpoint(checkpoint, osp.join(out_dir, filename))


def _writer(work_dir: str, numel: int, max_keep: int, stock: bool) -> None:
    from mmengine.fileio import LocalBackend, register_backend
    from mmengine.hooks import CheckpointHook

    from ..engine.hooks.atomic_checkpoint import AtomicCheckpointHook
    if stock:
        register_backend('local', LocalBackend, force=True, prefixes='')
    hook = (CheckpointHook if stock else AtomicCheckpointHook)(
        interval=1, by_epoch=False, max_keep_ckpts=max_keep)
    runner = _FakeRunner(work_dir, numel)
    hook.before_train(runner)
    step = 0
    while True:
        step += 1
        hook._save_checkpoint_with_step(runner, step, dict(epoch=0, iter=step))


def _consistent(path: Optional[str]) -> Optional[int]:
    """The step of checkpoint ``path`` if it loads and its content matches it, else None."""
    if not path or not osp.isfile(path):
        return None
    try:
        ckpt = load_checkpoint_mmapped(path)
        step = int(ckpt['meta']['iter'])
        w = ckpt['state_dict']['w']
        return step if float(w[0]) == float(w[-1]) == step else None
    except Exception:
        return None


def kill_during_writes(root: str, trials: int, seed: int, size_mb: float = 64,
                       max_keep: int = 1, stock: bool = False) -> List[Dict]:
    """Fork checkpoint writers and SIGKILL them at random points; report what survived.

    Half the trials kill at a uniformly random time once the first checkpoint exists, half
    right as a checkpoint write starts (atomic: a ``*.tmp-<pid>`` appears; stock: the previous
    checkpoint is deleted or a new one appears) plus a random 0-50 ms.
    """
    from ..engine.hooks.atomic_checkpoint import find_resumable_checkpoint
    rng = random.Random(seed)
    numel = int(size_mb * 2**20 / 4)
    results = []
    for trial in range(trials):
        work_dir = osp.join(root, f'{"stock" if stock else "atomic"}_{trial}')
        os.makedirs(work_dir)
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                _writer(work_dir, numel, max_keep, stock)
            finally:
                os._exit(1)
        pointer = osp.join(work_dir, 'last_checkpoint')
        start = time.time()
        while not osp.isfile(pointer):
            if time.time() - start > 120:
                os.kill(pid, signal.SIGKILL)
                raise RuntimeError('the writer did not save its first checkpoint')
            time.sleep(0.002)
        mode = 'during_write' if trial % 2 else 'uniform'
        if mode == 'uniform':
            time.sleep(rng.uniform(0, 1.0))
        else:
            first = set(glob.glob(osp.join(work_dir, '*.pth')))
            while True:
                names = set(glob.glob(osp.join(work_dir, '*.pth')))
                if (not stock and glob.glob(osp.join(work_dir, '*.tmp-*'))) or (
                        stock and names != first):
                    break
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with open(pointer) as f:
            named = f.read().strip()
        files = sorted(glob.glob(osp.join(work_dir, '*.pth')))
        leftovers = glob.glob(osp.join(work_dir, '*.tmp-*'))
        steps = {p: _consistent(p) for p in files}
        resumable = find_resumable_checkpoint(work_dir, warn=lambda msg: None)
        results.append(dict(
            trial=trial, mode=mode, stock=stock, last_checkpoint=osp.basename(named),
            last_checkpoint_step=_consistent(named), resumable=resumable and osp.basename(
                resumable), resumable_step=_consistent(resumable),
            newest_complete_step=max([s for s in steps.values() if s is not None], default=None),
            pth_files=len(files), broken_pth_files=sum(s is None for s in steps.values()),
            killed_mid_write=bool(leftovers) or any(s is None for s in steps.values())))
        for path in files + leftovers:
            os.remove(path)
    return results


def main() -> None:  # python -m tbx11k.testing.reliability kill ROOT TRIALS SEED [--stock]
    import sys
    _, command, root, trials, seed, *rest = sys.argv
    assert command == 'kill'
    stock = '--stock' in rest
    print(json.dumps(kill_during_writes(root, int(trials), int(seed), stock=stock)))


if __name__ == '__main__':
    main()
