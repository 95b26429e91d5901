"""tools/misc/setup_env.sh: what it prints at the end (run against a stand-in environment)."""
import os
import os.path as osp
import subprocess

from tbx11k.testing import REPO_ROOT

SETUP = osp.join(REPO_ROOT, 'tools', 'misc', 'setup_env.sh')


def test_setup_ends_by_saying_how_to_activate_and_what_to_run(tmp_path):
    """The set-up never said to activate .venv: `python tools/train.py` then failed with
    "No module named 'mmengine'". The stand-in python answers every step with success, so the
    script runs its whole course in a second without touching a real environment."""
    venv = tmp_path / 'env'
    (venv / 'bin').mkdir(parents=True)
    stand_in = venv / 'bin' / 'python'
    stand_in.write_text('#!/bin/sh\nexit 0\n')
    stand_in.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'WHEELHOUSE'}  # make exports it
    proc = subprocess.run(['bash', SETUP], cwd=str(tmp_path), capture_output=True, text=True,
                          env=dict(env, VENV=str(venv)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip().splitlines()
    tail = '\n'.join(lines[-6:])
    assert 'source env/bin/activate' in tail  # relative to where it was run
    assert 'python tools/train.py configs/dino_tbx11k_1gpu.py --data-root' in tail
    assert 'python tools/check_dataset.py' in tail
