"""Resuming from any checkpoint is bit-identical to not stopping (CPU, tiny 1-GPU config).

The interrupted run of conftest resumes five times, from every kind of checkpoint: written by a
signal inside epoch 1, by a signal at the end of epoch 1, by a signal inside epoch 2, by the
regular checkpoint hook (the last complete one before a kill -9), and by a signal again. Each
time the loop skips the finished steps of the epoch, reseeds the data and model randomness from
the sample positions and restores weights, EMA, optimizer, LR schedulers and message hub. Every
checkpoint it shares with the uninterrupted reference run (regular ones at steps 5, 10, 14) must
be bit-identical to the reference's: raw weights, EMA weights and EMA step count, optimizer
state and LR scheduler state, max |difference| == 0.
"""
from reliability_helpers import STEPS


def test_resumes_from_every_kind_of_checkpoint_are_bit_identical(interrupted_run):
    segments = interrupted_run['segments']
    resumed_from = [s['checkpoint'] for s in segments[:-1]]
    assert len(resumed_from) == 5
    for seg in segments[1:]:
        assert 'Resuming at epoch' in seg['log']  # CheckpointInterchangeHook's resume line
        # mmengine's false alarm when a resumed optimizer step is odd (step 7 always is one):
        # the accumulation counter is initialised in micro-batches, nothing is lost
        assert 'gradient of some iterations is lost' not in seg['log']
    assert any(s['checkpoint_step'] % 2 for s in segments[:-1])
    # mid-epoch resumes skipped the finished steps of their epoch
    mid_epoch = [s for s in segments[:-1] if s['checkpoint_step'] % 7]
    for seg, nxt in zip(segments[:-1], segments[1:]):
        if seg['checkpoint_step'] % 7:
            assert f"skipping its first {seg['checkpoint_step'] % 7} of 7 optimizer steps" \
                in nxt['log']
    compared = interrupted_run['compared']
    print(f'\n[figure] resumed from {", ".join(resumed_from)} ({len(mid_epoch)} inside an '
          f'epoch); max |difference| vs the uninterrupted run at the shared steps: '
          + ', '.join(f'step {k}: {v!r}' for k, v in sorted(compared.items())))
    assert STEPS in compared and len(compared) >= 2
    assert all(v == 0.0 for v in compared.values())
