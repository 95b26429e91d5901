"""tools/misc/demo.sh end to end on a tiny easy set and one epoch: it makes the data, trains,
evaluates, prints the detection table and the path of a drawing that exists."""
import os.path as osp
import re
import sys

from tbx11k.testing import REPO_ROOT, run

DEMO = osp.join(REPO_ROOT, 'tools', 'misc', 'demo.sh')


def test_demo_prints_the_ap_table_and_a_drawing_path(tmp_path):
    env = dict(DEMO_DATA=str(tmp_path / 'data'), DEMO_WORK_DIR=str(tmp_path / 'work'),
               DEMO_EPOCHS='1', DEMO_NUM_TRAIN='6', DEMO_NUM_VAL='3', PYTHON=sys.executable)
    proc = run(['bash', DEMO], env=env, timeout=900)
    out = proc.stdout
    assert '[demo] making an easy synthetic TBX11K' in out
    assert '| Category-agnostic TB |' in out and '| mean over classes with GT |' in out
    drawn = re.search(r'^\[demo\] drawn: (\S+) ', out, re.M)
    assert drawn, out
    path = drawn.group(1)
    assert osp.isfile(path) and path.startswith(str(tmp_path / 'work' / 'test'))
    assert '/vis/tb/' in path  # a val film with lesions
    assert len(out.splitlines()) <= 25, out  # short: no training log, no traceback
