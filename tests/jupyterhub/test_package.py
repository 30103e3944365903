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
    """As the README installs it: into a venv that sees Debian's packages (Debian's pip refuses
    system installs, PEP 668), offline; the hub's Python then finds the `elsa` spawner."""
    venv = tmp_path / "elsa-hub"
    # From a copy: pip builds in the source folder, which is the repository's otherwise.
    src = tmp_path / "src"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    env.pop("PYTHONPATH", None)
    for cmd in (["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                [str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation", "--no-deps", "--no-index",
                 str(src)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
    (site,) = venv.glob("lib/python3*/site-packages")
    assert (site / "elsa_jupyterhub" / "static" / "admin.html").exists()
    entry = next(site.glob("elsa_jupyterhub-*.dist-info")) / "entry_points.txt"
    assert "elsa = elsa_jupyterhub.spawner:ElsaSpawner" in entry.read_text()
    r = subprocess.run([str(venv / "bin" / "elsa-hub-service"), "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and "--checkpoint-after" in r.stdout, r.stderr
    # The hub as the README runs it (the venv's Python, Debian's jupyterhub) resolves "elsa".
    r = subprocess.run([str(venv / "bin" / "python3"), "-c",
                        "import jupyterhub, jupyterhub.app as a; app = a.JupyterHub(); app.spawner_class = 'elsa'; "
                        "print(jupyterhub.__file__, app.spawner_class.__module__)"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["/usr/lib/python3/dist-packages/jupyterhub/__init__.py", "elsa_jupyterhub.spawner"]


def test_session_names_are_reversible_and_valid_for_elsad():
    for user, server in [("alice", ""), ("Bob.Smith@example.org", ""), ("ünï", "gpu 1"), ("a--b", "x-y")]:
        name = config.session_name(user, server)
        assert all(c.isalnum() or c in "._-" for c in name) and name.isascii()
        assert config.parse_session_name(name) == (user, server)
    assert config.session_name("a-b") != config.session_name("a_2db")
    assert config.parse_session_name("someone-else") is None


def test_progress_follows_the_agents_phases():
    # The agent's events as elsad sends them: a phase, a sentence, and named fields.
    mib = 2**20
    pct = 0
    seen = []
    for event in [{"phase": "connect", "detail": "to h2"},
                  {"phase": "precopy", "detail": "round 1", "round": 1, "bytes_done": int(409.6 * mib),
                   "bytes_total": int(411.1 * mib), "pages": 104857, "seconds": 0.7},
                  {"phase": "precopy", "detail": "round 2", "round": 2, "bytes_done": int(4.8 * mib),
                   "bytes_total": int(411.2 * mib), "pages": 1228, "seconds": 0.13},
                  {"phase": "gate", "detail": "pre-copy done; waiting for the go to freeze"},
                  {"phase": "freeze", "detail": "freezing"}, {"phase": "transfer", "detail": "3 pages changed", "pages": 3},
                  {"phase": "restore", "detail": "restoring on h2"}, {"phase": "running", "detail": "on h2 after 420 ms"},
                  {"phase": "postcopy", "detail": "64.0 MiB of 512.0 MiB", "bytes_done": 64 * mib,
                   "bytes_total": 512 * mib}]:
        pct = progress_percent("migrate", event, pct)
        seen.append(pct)
    assert seen == sorted(seen) and seen[-1] < 100
    assert event_bytes({"phase": "precopy", "round": 1, "bytes_done": int(4.5 * mib), "bytes_total": int(411.1 * mib)}) \
        == int(4.5 * mib)
    assert event_bytes({"phase": "verify", "detail": "checking 48 files", "bytes_total": 381 * mib}) == 381 * mib
    assert event_bytes({"phase": "transfer", "pages": 3}) == 3 * 4096
    assert event_bytes({"phase": "gate", "detail": "round 1: 411.1 MiB scanned"}) is None  # sentences are not parsed
