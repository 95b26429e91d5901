"""The suite's own scheduling (tests/conftest.py): the tests that share a training carry one
pytest-xdist group, and under `make test` (xdist workers, ``--dist loadgroup``) their node ids end
with it, which is what loadgroup schedules by (else a training runs on two workers at once)."""
import os
from typing import Optional

import pytest


def _group(item) -> Optional[str]:
    mark = item.get_closest_marker('xdist_group')
    return mark.args[0] if mark else None


def _suite_conftest(config):
    suffix = os.path.join('tests', 'conftest.py')
    return next(plugin for plugin in config.pluginmanager.get_plugins()
                if str(getattr(plugin, '__file__', '')).endswith(suffix))


def test_tests_that_share_a_training_are_one_group(request):
    slow_fixtures = _suite_conftest(request.config).SLOW_FIXTURES
    groups_by_training = {}
    for item in request.session.items:
        for name in slow_fixtures.intersection(item.fixturenames):
            scope = item._fixtureinfo.name2fixturedefs[name][-1].scope
            training = name if scope == 'session' else f'{item.path.name}::{name}'
            groups_by_training.setdefault(training, set()).add(_group(item))
            assert item.get_closest_marker('slow'), item.nodeid
    for training, groups in groups_by_training.items():
        assert len(groups) == 1 and None not in groups, (training, groups)


def test_xdist_schedules_by_the_groups(request):
    if not (os.environ.get('PYTEST_XDIST_WORKER')
            and getattr(request.config.option, 'loadgroup', False)):
        message = 'one process: nothing to schedule (`make test` runs pytest-xdist workers)'
        if os.environ.get('CI') == 'true':  # .ci/run runs `make test`: the workers must be on
            pytest.fail(f'CI=true: {message}', pytrace=False)
        pytest.skip(message)
    grouped = [item for item in request.session.items if _group(item)]
    assert all(item.nodeid.endswith(f'@{_group(item)}') for item in grouped), [
        item.nodeid for item in grouped if not item.nodeid.endswith(f'@{_group(item)}')][:5]
