"""Exit statuses of tools/train.py that job scripts act on (0 = the schedule is done)."""
#: a resumed run had nothing left to train: the schedule was already complete (not a success)
EXIT_NOTHING_TO_TRAIN = 3
#: the checkpoint to resume does not fit the config (model, classes or effective batch)
EXIT_INCOMPATIBLE_CHECKPOINT = 4
#: the launch (GPUs x images x accumulation) does not give the config's effective batch
EXIT_WRONG_LAYOUT = 5
#: the pretrained weights an init_cfg names (the ImageNet backbone) cannot be downloaded (no
#: network) or read (no such file): nothing was built; give a local file and start again
EXIT_PRETRAINED_UNAVAILABLE = 7
#: stopped by a signal after writing a checkpoint at an optimizer-step boundary: resume to go on
#: (75 is EX_TEMPFAIL in sysexits.h: "try again later")
EXIT_PREEMPTED = 75
#: stopped because optimizer steps kept having non-finite losses/gradients (more than
#: TrainingHealthHook.max_skipped_steps) or the weights became non-finite; nothing non-finite was
#: saved: fix the cause, then resume
EXIT_DIVERGED = 6
#: a checkpoint to load holds Python objects besides weights and training state (unpickling it
#: could run code) and was refused before anything in it ran: load it with --trust-checkpoint
#: or TBX11K_TRUST_CHECKPOINTS=1 only if you trust the file. Not retried: a job chain stops
EXIT_UNTRUSTED_CHECKPOINT = 8
