"""The Runner used by every tbx11k config (``runner_type = 'TBX11KRunner'``)."""
import copy
from typing import Dict, Optional

import torch
from mmengine.config import Config
from mmengine.dist import broadcast_object_list, is_distributed, is_main_process
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import RUNNERS  # the root: tools build runners before a scope is set
from mmengine.runner import Runner

from ..utils.dist import init_cpu_process_group
from ..utils.safe_checkpoint import UntrustedCheckpointError
from .hooks.atomic_checkpoint import find_resumable_checkpoint
from .loops import accumulative_counts_of
from .startup_log import StartupLogFilter


class _TextCachedConfig(Config):
    """A Config whose ``pretty_text`` is formatted once per content.

    mmengine formats the whole config with yapf at start-up and again for every checkpoint's meta
    (about 1 s each on a 2-core CPU, and on the path of a preemption save); the text is reused
    while the config's content is unchanged.
    """

    @property
    def pretty_text(self) -> str:
        content = self._cfg_dict.to_dict()
        cached = self.__dict__.get('_cached_pretty_text')
        if cached is None or cached[0] != content:
            cached = (copy.deepcopy(content), Config.pretty_text.fget(self))
            object.__setattr__(self, '_cached_pretty_text', cached)
        return cached[1]


@RUNNERS.register_module()
class TBX11KRunner(Runner):
    """mmengine's Runner with what the interchange of layouts and Slurm sessions need.

    - ``--auto-scale-lr`` counts the effective batch, ``world_size x batch_size x
      accumulative_counts`` (stock mmengine ignores accumulation; open-mmlab/mmengine#1080,
      unmerged).
    - Without CUDA, distributed runs use gloo and DDP without ``device_ids``, so the 2-process
      logic runs on CPU machines (tests, CI).
    - Auto-resume takes a checkpoint completed after ``last_checkpoint`` was written, and falls
      back to the training checkpoint furthest into training when ``last_checkpoint`` is bad
      (:func:`~tbx11k.engine.hooks.atomic_checkpoint.find_resumable_checkpoint`); with nothing
      to resume it loads ``load_from`` (kept by tools/train.py as
      ``load_from_if_nothing_to_resume``: mmdet's ``--resume`` drops it). A work-dir
      checkpoint that holds Python objects besides weights and training state is not passed over:
      its ``UntrustedCheckpointError`` stops the run on every rank.
    - The config text stored in every checkpoint is formatted once, not per save.
    - The log starts with the layout report (effective batch, counters, batch norms under
      accumulation), before mmengine's config dump and hook listing; the optimizer
      constructor's per-parameter lines are at DEBUG (:class:`~tbx11k.engine.startup_log.
      StartupLogFilter`).

    Args:
        *args: As mmengine's ``Runner``.
        cfg (Config, optional): The whole config, as mmengine's ``Runner``. Defaults to None.
        **kwargs: As mmengine's ``Runner``.
    """

    def __init__(self, *args, cfg: Optional[Config] = None, **kwargs) -> None:
        if isinstance(cfg, Config):
            cfg = copy.deepcopy(cfg)
            object.__setattr__(cfg, '__class__', _TextCachedConfig)
        super().__init__(*args, cfg=cfg, **kwargs)

    def build_logger(self, log_level='INFO', log_file: Optional[str] = None, **kwargs):
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        self._startup_log = StartupLogFilter(logger)
        logger.addFilter(self._startup_log)
        return logger

    def _release_startup_log(self) -> None:
        startup_log = getattr(self, '_startup_log', None)
        if startup_log is not None:
            startup_log.release()

    def train(self) -> torch.nn.Module:
        """mmengine's ``train``, with the layout report logged first: the train loop is built
        (as ``Runner.train`` does first too) and reports before the held config dump is
        logged."""
        try:
            if self._train_loop is not None:  # else Runner.train raises its own error
                self._train_loop = self.build_train_loop(self._train_loop)
                report_layout = getattr(self._train_loop, 'report_layout', None)
                if report_layout is not None:
                    report_layout()
        finally:
            self._release_startup_log()
        return super().train()

    def val(self) -> dict:
        self._release_startup_log()
        return super().val()

    def test(self) -> dict:
        self._release_startup_log()
        return super().test()

    def setup_env(self, env_cfg: Dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            timeout = int(env_cfg.get('dist_cfg', {}).get('timeout', 1800))
            init_cpu_process_group(self.launcher, timeout)
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict], model: torch.nn.Module):
        if self.distributed and not torch.cuda.is_available():
            # DDP refuses device_ids for CPU modules; mmengine always passes [LOCAL_RANK].
            model_wrapper_cfg = dict(model_wrapper_cfg or {})
            model_wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
            model_wrapper_cfg.setdefault('broadcast_buffers', False)
            model_wrapper_cfg.setdefault('find_unused_parameters',
                                         self.cfg.get('find_unused_parameters', False))
            model_wrapper_cfg['device_ids'] = None
        return super().wrap_model(model_wrapper_cfg, model)

    def load_or_resume(self) -> None:
        """Auto-resume (``--resume`` without a path) from a checkpoint that loads.

        Stock mmengine resumes whatever ``last_checkpoint`` names; here rank 0 picks the
        checkpoint with :func:`find_resumable_checkpoint` (a newer completed checkpoint than the
        pointer's, or the one furthest into training when the pointer is bad, with a warning) and
        broadcasts it to all ranks.
        """
        if self._resume and self._load_from is None and not self._has_loaded:
            found = [None]
            if is_main_process():
                try:
                    found[0] = find_resumable_checkpoint(self.work_dir, warn=self.logger.warning)
                except UntrustedCheckpointError as error:  # every rank stops, none waits
                    found[0] = error
            if is_distributed():
                broadcast_object_list(found)
            if isinstance(found[0], UntrustedCheckpointError):
                raise found[0]
            initial_weights = self.cfg.get('load_from_if_nothing_to_resume')
            # a warning: a mistyped --work-dir would otherwise start a new run unnoticed
            if found[0] is None and initial_weights:
                self.logger.warning(f'Nothing to resume in {self.work_dir}: starting from the '
                                    f'weights of load_from={initial_weights}')
                self._resume = False
                self._load_from = initial_weights
            elif found[0] is None:
                self.logger.warning(f'Nothing to resume in {self.work_dir}: starting from '
                                    'scratch')
                self._resume = False
            else:
                self._load_from = found[0]
        super().load_or_resume()
        self._count_micro_batches_in_next_count_init()

    def _count_micro_batches_in_next_count_init(self) -> None:
        """``Runner.train()`` initialises the optim wrapper's accumulation counter right after
        ``load_or_resume`` with ``train_loop.iter`` / ``max_iters``; our loop counts those in
        optimizer steps, the counter counts micro-batches. Unconverted, a resume at an odd step
        makes mmengine warn that "the gradient of some iterations is lost" (nothing is: the loop
        re-initialises it). The next call gets micro-batch counts instead."""
        from .loops import AccumulationEpochBasedTrainLoop
        optim_wrapper = getattr(self, 'optim_wrapper', None)
        if not (isinstance(getattr(self, '_train_loop', None), AccumulationEpochBasedTrainLoop)
                and isinstance(optim_wrapper, OptimWrapper)):
            return
        to_micro_batches = self._train_loop.micro_batch_counts
        original = type(optim_wrapper).initialize_count_status

        def initialize_count_status(model, init_counts: int, max_counts: int) -> None:
            del optim_wrapper.initialize_count_status  # one call only
            original(optim_wrapper, model, *to_micro_batches(init_counts, max_counts))

        optim_wrapper.initialize_count_status = initialize_count_status

    @property
    def train_batch_size(self) -> int:
        """Images per micro-batch per process."""
        loader = self._train_dataloader
        return int(loader['batch_size'] if isinstance(loader, dict) else loader.batch_size)

    def effective_batch_size(self, optim_wrapper=None) -> int:
        """Images per optimizer step: world size x batch per process x accumulation.

        Args:
            optim_wrapper (OptimWrapper | dict, optional): The optim wrapper or its config.
                Defaults to None (the runner's).

        Returns:
            int: The effective batch size.
        """
        optim_wrapper = self.optim_wrapper if optim_wrapper is None else optim_wrapper
        return self.world_size * self.train_batch_size * accumulative_counts_of(optim_wrapper)

    def scale_lr(self, optim_wrapper: OptimWrapper, auto_scale_lr: Optional[Dict] = None) -> None:
        """Linear LR scaling by the effective batch (accumulation included).

        Args:
            optim_wrapper (OptimWrapper): The optim wrapper whose LRs to scale.
            auto_scale_lr (dict, optional): ``dict(enable=..., base_batch_size=...)`` as in
                mmengine. Defaults to None (no scaling).
        """
        if auto_scale_lr is None or not auto_scale_lr.get('enable', False):
            return
        if 'base_batch_size' not in auto_scale_lr:
            raise ValueError('auto_scale_lr needs base_batch_size')
        effective = self.effective_batch_size(optim_wrapper)
        ratio = effective / float(auto_scale_lr['base_batch_size'])
        self.logger.info(
            f"Auto-scaled LR by {ratio:g} = effective batch {effective} "
            f"({self.world_size} x {self.train_batch_size} x "
            f"{accumulative_counts_of(optim_wrapper)}) / base_batch_size "
            f"{auto_scale_lr['base_batch_size']}")
        wrappers = (list(optim_wrapper.values())
                    if isinstance(optim_wrapper, OptimWrapperDict) else [optim_wrapper])
        for wrapper in wrappers:
            for group in wrapper.optimizer.param_groups:
                group['lr'] = group['lr'] * ratio
