"""Fixtures of the user-tool tests: a COCO-like DINO checkpoint, its conversion, and one short
real training run from it (shared by the conversion, inference and plotting tests)."""
import sys

import pytest
import torch

from tbx11k.testing import TINY_1GPU, run, train_command
from tbx11k.testing.tools import CONVERT, RUN_EPOCHS, coco_like_checkpoint


@pytest.fixture(scope='session')
def coco_like_tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('coco_like') / 'tiny_dino_coco.pth'
    torch.save(coco_like_checkpoint(TINY_1GPU), str(path))
    return str(path)


@pytest.fixture(scope='session')
def converted_tiny(coco_like_tiny_checkpoint, tmp_path_factory):
    """(path, stdout) of the tiny COCO-like checkpoint converted by the CLI, checked against the
    tiny config."""
    out = str(tmp_path_factory.mktemp('converted') / 'tiny_dino_tbx11k.pth')
    proc = run([sys.executable, CONVERT,
                coco_like_tiny_checkpoint, out, '--check-config', TINY_1GPU], timeout=300)
    return out, proc.stdout


@pytest.fixture(scope='session')
def tiny_run(training_root, converted_tiny, tmp_path_factory):
    """A real tiny training run fine-tuned from the converted checkpoint: 2 epochs, validation
    after each, every optimizer step logged. Returns dict(work_dir, checkpoint, log,
    data_root, load_from)."""
    work_dir = tmp_path_factory.mktemp('tiny_run')
    options = {
        'train_cfg.max_epochs': RUN_EPOCHS,
        'default_hooks.logger.interval': 1,
        'load_from': converted_tiny[0],
    }
    proc = run(train_command(TINY_1GPU, str(work_dir), data_root=training_root, options=options),
               timeout=600)
    return dict(work_dir=str(work_dir), checkpoint=str(work_dir / f'epoch_{RUN_EPOCHS}.pth'),
                log=proc.stdout + proc.stderr, data_root=training_root,
                load_from=converted_tiny[0])
