"""The package installs by path with Debian's pip, offline, and its pure parts behave."""

import os
import shutil
import subprocess
import sys

from hubstack import PKG

sys.path.insert(0, PKG)

from elsa_jupyterhub import config  # noqa: E402
from elsa_jupyterhub.agent import event_bytes, progress_percent  # noqa: E402


def test_installs_by_path_with_pip_offline(tmp_path):
    target = tmp_path / "site"
    # From a copy: pip builds in the source folder, which is the repository's otherwise.
    src = tmp_path / "src"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
                        "--no-index", "--target", str(target), str(src)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (target / "elsa_jupyterhub" / "static" / "admin.html").exists()
    entry = next(target.glob("elsa_jupyterhub-*.dist-info")) / "entry_points.txt"
    assert "elsa = elsa_jupyterhub.spawner:ElsaSpawner" in entry.read_text()
    r = subprocess.run([str(target / "bin" / "elsa-hub-service"), "--help"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(target)), timeout=60)
    assert r.returncode == 0 and "--checkpoint-after" in r.stdout, r.stderr


def test_session_names_are_reversible_and_valid_for_elsad():
    for user, server in [("alice", ""), ("Bob.Smith@example.org", ""), ("ünï", "gpu 1"), ("a--b", "x-y")]:
        name = config.session_name(user, server)
        assert all(c.isalnum() or c in "._-" for c in name) and name.isascii()
        assert config.parse_session_name(name) == (user, server)
    assert config.session_name("a-b") != config.session_name("a_2db")
    assert config.parse_session_name("someone-else") is None


def test_progress_follows_the_agents_phases():
    pct = 0
    seen = []
    for phase, detail in [("connect", "to h2"), ("precopy", "round 1: 411.1 MiB scanned, 409.6 MiB sent in 0.70 s"),
                          ("precopy", "round 2: 411.2 MiB scanned, 4.8 MiB sent in 0.13 s"),
                          ("gate", "pre-copy done; waiting for the go to freeze"),
                          ("freeze", "freezing"), ("transfer", "3 pages changed"), ("restore", "restoring on h2"),
                          ("running", "on h2 after 420 ms"), ("postcopy", "64.0 MiB of 512.0 MiB")]:
        pct = progress_percent("migrate", {"phase": phase, "detail": detail}, pct)
        seen.append(pct)
    assert seen == sorted(seen) and seen[-1] < 100
    assert event_bytes({"detail": "round 1: 411.1 MiB scanned, 4.5 MiB sent in 0.70 s"}) == int(4.5 * 2**20)
    assert event_bytes({"detail": "checking 48 files (381.0 MiB)"}) == 381 * 2**20
