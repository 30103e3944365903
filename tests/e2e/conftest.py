"""Fixtures for the end-to-end tests: a private elsad per test, cleaned up even on failure."""

import os
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools", "pylib"))

from elsa_agent import ElsaAgent  # noqa: E402
from elsa_hosts import SimulatedHosts  # noqa: E402


def _bin_dir():
    bin_dir = os.environ.get("ELSA_BIN_DIR", os.path.join(REPO, "build", "engine"))
    if not os.path.exists(os.path.join(bin_dir, "elsad")):
        pytest.fail(f"no elsad in {bin_dir}: build first (tools/test does), or set ELSA_BIN_DIR")
    return bin_dir


@pytest.fixture(autouse=True)
def require_root():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (CRIU, PID namespaces): run them as root")


@pytest.fixture
def bin_dir():
    return _bin_dir()


@pytest.fixture
def agent():
    with ElsaAgent(_bin_dir(), criu_prefix=os.environ.get("ELSA_CRIU_PREFIX")) as a:
        yield a


@pytest.fixture
def agent_factory():
    """Makes extra agents (e.g. one that cannot find CRIU); all closed at the end."""
    made = []

    def make(**kwargs):
        a = ElsaAgent(_bin_dir(), **kwargs)
        made.append(a)
        return a.start()

    yield make
    for a in made:
        a.close()


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="elsa-nb-") as d:
        yield d


@pytest.fixture
def hosts():
    """Two simulated hosts, h1 and h2, removed afterwards. Names and subnet are this run's own,
    so a developer's `tools/hosts up` (10.213.0.0/24) and other runs are left alone."""
    h = SimulatedHosts(2, prefix=f"e{os.getpid() % 100000}", subnet=100 + os.getpid() % 150)
    with h:
        yield h
    assert not h.exists(), "the hosts' namespaces are gone"
