"""Fixtures of the Slurm tests: the local cluster (skip without it, fail under CI=true) and a
tracker that cancels every job and stops every process the tests started, also on failure."""
import pytest

from tbx11k.testing.slurm import PARTITION, Jobs, cluster_problem, in_ci


@pytest.fixture(scope='session')
def slurm_cluster() -> str:
    """The partition to use; skips (or under CI=true fails) when no usable Slurm runs here."""
    problem = cluster_problem()
    if problem:
        if in_ci():
            pytest.fail(f'CI=true: the Slurm tests must run, but {problem}', pytrace=False)
        pytest.skip(problem)
    return PARTITION


@pytest.fixture(scope='module')
def slurm_jobs(slurm_cluster):
    jobs = Jobs()
    yield jobs
    jobs.stop_all()
