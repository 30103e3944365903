"""One deployment (hosts, agents, elsa-proxy, JupyterHub with ElsaSpawner and elsa-hub-service)
shared by the hub tests: it takes a while to build, and each test uses users of its own."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hubstack import REPO, HubStack  # noqa: E402


@pytest.fixture(scope="session")
def stack():
    if os.geteuid() != 0:
        pytest.fail("the JupyterHub tests need root (CRIU, PID and network namespaces): run them as root")
    if not os.path.exists("/usr/bin/jupyterhub"):
        pytest.fail("/usr/bin/jupyterhub missing: tools/bootstrap installs Debian's jupyterhub")
    bin_dir = os.environ.get("ELSA_BIN_DIR", os.path.join(REPO, "build", "engine"))
    proxy_bin = os.environ.get("ELSA_PROXY_BIN", os.path.join(REPO, "build", "proxy", "elsa-proxy"))
    for path in (os.path.join(bin_dir, "elsad"), proxy_bin):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} missing: build first (cmake --build build), or set ELSA_BIN_DIR / ELSA_PROXY_BIN")
    s = HubStack(bin_dir, proxy_bin, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"))
    s.start()
    try:
        yield s
    finally:
        s.close()
        assert not s.hosts.exists(), "the hosts' namespaces are gone"
