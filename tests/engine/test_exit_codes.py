"""Exit statuses named in docstrings, comments and docs agree with tbx11k/engine/exit_codes.py."""
import glob
import os.path as osp
import re

from tbx11k.engine import exit_codes
from tbx11k.testing import REPO_ROOT

#: ``EXIT_DIVERGED`` (6), EXIT_DIVERGED (6), ``EXIT_DIVERGED = 6``
NAMED_STATUS = re.compile(r'\b(EXIT_[A-Z_]+)`{0,2}\s*(?:\(|=\s*)(\d+)\b')


def text_files():
    patterns = ('tbx11k/**/*.py', 'tools/**/*.py', 'tools/**/*.sh', 'slurm/**/*', 'configs/**/*.py',
                'docs/**/*.md', 'README.md')
    for pattern in patterns:
        for path in glob.glob(osp.join(REPO_ROOT, pattern), recursive=True):
            if osp.isfile(path):
                yield path


def test_statuses_named_beside_their_constant_are_the_constants_values():
    codes = {name: value for name, value in vars(exit_codes).items() if name.startswith('EXIT_')}
    assert codes['EXIT_DIVERGED'] == 6 and codes['EXIT_WRONG_LAYOUT'] == 5
    found, wrong = 0, []
    for path in text_files():
        with open(path, errors='replace') as f:
            text = f.read()
        for match in NAMED_STATUS.finditer(text):
            name, value = match.group(1), int(match.group(2))
            found += 1
            if codes.get(name) != value:
                line = text.count('\n', 0, match.start()) + 1
                wrong.append(f'{osp.relpath(path, REPO_ROOT)}:{line}: {match.group(0)} '
                             f'(exit_codes.py: {codes.get(name)})')
    assert found >= 5  # the constants themselves and the docstrings that name them
    assert not wrong, '\n'.join(wrong)
