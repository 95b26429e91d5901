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
from tbx11k.testing.reliability_runs import STEPS


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


def test_iteration_checkpoint_of_an_epochs_last_step_resumes(tmp_path, training_root,
                                                             reference_run):
    """mmengine's CheckpointHook writes an iteration checkpoint of an epoch's last step before
    the epoch's end (iter_7.pth: epoch 0, 7 steps done). Resuming it refused with "step 7 does not
    lie in epoch 0"; it now ends epoch 1 first (its by-epoch LR step) and goes on, bit-identical."""
    from tbx11k.testing import load_checkpoint
    from tbx11k.testing.reliability_runs import compare, train
    writer = tmp_path / 'writer'
    rc, log = train(writer, training_root, resume=reference_run['work_dir'] / 'iter_5.pth',
                    **{'default_hooks.checkpoint.interval': 7})
    assert rc == 0, log[-3000:]
    at_epoch_end = load_checkpoint(str(writer / 'iter_7.pth'))
    assert (at_epoch_end['meta']['epoch'], at_epoch_end['meta']['iter']) == (0, 7)
    rc, log = train(tmp_path / 'resumed', training_root, resume=writer / 'iter_7.pth')
    assert rc == 0, log[-3000:]
    assert 'after the last optimizer step of epoch 1, before its end: ending that epoch first' \
        in log
    final = load_checkpoint(str(tmp_path / 'resumed' / f'iter_{STEPS}.pth'))
    assert compare(reference_run['final'], final) == 0.0
