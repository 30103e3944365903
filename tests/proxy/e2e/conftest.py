"""Fixtures for elsa-proxy's end-to-end tests: proxies, backends, all cleaned up on failure."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from proxy_util import Processes, Proxy  # noqa: E402


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.close()


@pytest.fixture
def proxy_factory():
    made = []

    def make(kind="elsa", **kwargs):
        p = Proxy(kind, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def elsa(proxy_factory):
    return proxy_factory("elsa")
