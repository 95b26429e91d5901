"""Training / inference speed of a tbx11k config beside stock mmdet DINO, in one process.

Used by ``tools/analysis_tools/benchmark.py`` (see its ``--help``) and by
``.dev_scripts/gpu_benchmark.sh``. Modules: :mod:`.cases` (configs, variants, the plan),
:mod:`.measure` (timers, profiler, peak memory), :mod:`.environment` (the machine and the GPU
self-checks :mod:`.kernel_check`, :mod:`.ema_check`, :mod:`.batched_loss_check`), :mod:`.report`,
:mod:`.run` (the whole run), :mod:`.cli`; :mod:`.op_count` counts aten ops and kernel launches
(``tools/analysis_tools/count_ops.py``).

Nothing in the runtime package imports this one.

Every *case* builds the real runner from a config (``TBX11KRunner`` for ours, mmengine's ``Runner``
for stock mmdet) with a temporary work dir, no validation, no checkpoints, no logging hook and the
backbone's pretrained ``init_cfg`` removed (no network; the speed does not depend on the weights),
trains on a synthetic TBX11K-format set and times optimizer steps with a hook of the lowest priority
(so every other hook of the iteration, EMA included, is inside the time): after ``warmup`` optimizer
steps, the next ``steps`` (``torch.cuda.synchronize`` first on a GPU); then the hook stops the run
by raising :class:`BenchmarkDone`. Times include data loading, as in real training.

Stock mmdet DINO is the same model (sizes, classes, loss settings), data and pipeline, with mmdet's
stock components: detector ``DINO`` (no window loss normalisation), ``EpochBasedTrainLoop`` (one
iteration = one micro-batch: an optimizer step every ``accumulative_counts`` iterations; the timer
counts micro-batches so that both report per optimizer step and per image), ``DefaultSampler`` +
``AspectRatioBatchSampler``, ``CocoDataset`` with the TBX11K classes, mmengine's ``Runner`` and no
custom hooks (stock DINO has none; ours keeps the config's ``EMAHook`` and
``CheckpointInterchangeHook``: they are part of our training).

Peak memory: ``torch.cuda.max_memory_allocated`` over the case on a GPU; on the CPU the largest
resident set size of this process sampled every 10 ms during the case (data-loader worker processes
not included).
"""
