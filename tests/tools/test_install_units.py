"""tools/install-units into a temporary root: binaries, CRIU, units and the sysctl drop-in land
where asked, the units name them there, and `systemd-analyze verify` accepts every unit (which
also checks that each ExecStart= program exists and is executable)."""

import os
import re
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL_UNITS = os.path.join(REPO, "tools", "install-units")
UNITS_SRC = os.path.join(REPO, "tools", "systemd")
UNITS = sorted(n for n in os.listdir(UNITS_SRC) if n.endswith(".service"))
PROGRAMS = ("elsad", "elsa", "elsa-proxy")


def executable(path, text="#!/bin/sh\nexit 0\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def build_or_fakes(tmp_path):
    """The real build if it has every program (ELSA_BUILD_DIR, else build/), else stand-ins:
    what is checked here is where things land, not what they do."""
    build = os.environ.get("ELSA_BUILD_DIR", os.path.join(REPO, "build"))
    if all(os.access(os.path.join(build, sub, p), os.X_OK)
           for sub, p in (("engine", "elsad"), ("engine", "elsa"), ("proxy", "elsa-proxy"))):
        return build
    fakes = tmp_path / "fake-build"
    for p in PROGRAMS:
        executable(str(fakes / p))
    return str(fakes)


@pytest.fixture
def installed(tmp_path):
    """Runs tools/install-units with every destination in tmp_path; returns the layout and its output."""
    # Names unlike the defaults, so that a default left in a unit shows.
    layout = {
        "prefix": tmp_path / "prefix",
        "dest": tmp_path / "units",
        "sysctl": tmp_path / "sysctl.d",
        "hub_venv": tmp_path / "hub-venv",
    }
    # The hub's venv is the operator's (the README makes it); a stand-in for its Python.
    executable(str(layout["hub_venv"] / "bin" / "python3"))
    # A bootstrap record naming a CRIU build of its own, as tools/bootstrap leaves in .deps.
    deps = tmp_path / "deps"
    executable(str(deps / "criu-9.9.9" / "sbin" / "criu"), "#!/bin/sh\necho 'Version: 9.9.9'\n")
    (deps / "criu-9.9.9" / ".complete").write_text("")
    (deps / "env").write_text(f"ELSA_CRIU={deps}/criu-9.9.9/sbin/criu\n")

    def run(*extra):
        cmd = [INSTALL_UNITS, "--prefix", str(layout["prefix"]), "--dest", str(layout["dest"]),
               "--sysctl-dir", str(layout["sysctl"]), "--hub-venv", str(layout["hub_venv"]),
               "--from", build_or_fakes(tmp_path), *extra]
        env = dict(os.environ, ELSA_DEPS=str(deps))
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    r = run()
    assert r.returncode == 0, f"install-units failed:\n{r.stdout}\n{r.stderr}"
    return layout, r, run


def test_binaries_criu_units_and_sysctl_land_where_asked(installed):
    layout, _, _ = installed
    for p in PROGRAMS:
        path = layout["prefix"] / "bin" / p
        assert os.access(path, os.X_OK), f"{path} not installed"
    assert os.access(layout["prefix"] / "lib" / "elsa" / "criu" / "sbin" / "criu", os.X_OK)
    assert (layout["prefix"] / "share" / "doc" / "elsa" / "README.md").is_file()
    for unit in UNITS:
        installed_unit = layout["dest"] / unit
        assert installed_unit.is_file()
        assert stat.S_IMODE(installed_unit.stat().st_mode) == 0o644
        text = installed_unit.read_text()
        assert "/usr/local/" not in text and "/opt/elsa-hub/" not in text, f"{unit} still names the defaults"
    sysctl = (layout["sysctl"] / "90-elsa.conf").read_text()
    assert re.search(r"^fs\.pipe-max-size = 4194304$", sysctl, re.M)
    assert re.search(r"^fs\.pipe-user-pages-soft = 0$", sysctl, re.M)


def test_elsad_unit_runs_the_installed_agent_and_spares_its_sessions(installed):
    layout, _, _ = installed
    unit = (layout["dest"] / "elsad.service").read_text()
    prefix = layout["prefix"]
    assert (f"ExecStart={prefix}/bin/elsad --socket /run/elsa/elsad.sock --state-dir /var/lib/elsa "
            f"--criu-prefix {prefix}/lib/elsa/criu $ELSAD_ARGS") in unit
    # A restart or an upgrade of the agent must not kill the sessions, its children.
    assert re.search(r"^KillMode=process$", unit, re.M)
    assert re.search(r"^OOMPolicy=continue$", unit, re.M)
    assert re.search(r"^Restart=on-failure$", unit, re.M)
    hub = (layout["dest"] / "elsa-hub.service").read_text()
    assert f"ExecStart={layout['hub_venv']}/bin/python3 -m jupyterhub -f /etc/elsa/jupyterhub_config.py" in hub
    assert re.search(r"^Wants=elsa-proxy\.service$", hub, re.M)


def test_systemd_analyze_verify_accepts_every_unit(installed):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: it comes with Debian's `systemd` package, which tools/bootstrap installs")
    layout, _, _ = installed
    paths = [str(layout["dest"] / u) for u in UNITS]
    r = subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120)
    # verify exits 0 on warnings (an unknown key, a misspelt section): those count as failures too.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if any(u in line for u in UNITS)]
    assert r.returncode == 0 and not ours, f"systemd-analyze verify {' '.join(paths)}:\n{r.stdout}{r.stderr}"


def test_sysctl_values_are_the_bootstraps(installed):
    with open(os.path.join(REPO, "tools", "bootstrap")) as f:
        bootstrap = f.read()
    layout, _, _ = installed
    for key, value in re.findall(r"^([\w.-]+) = (\S+)$", (layout["sysctl"] / "90-elsa.conf").read_text(), re.M):
        assert key in bootstrap and value in bootstrap, f"tools/bootstrap does not set {key} to {value}"


def test_upgrade_replaces_binaries_without_writing_into_the_running_one(installed):
    layout, _, run = installed
    elsad = layout["prefix"] / "bin" / "elsad"
    before = elsad.stat().st_ino
    with open(elsad, "rb"):  # a running agent holds its binary open
        r = run()
    assert r.returncode == 0, r.stderr
    assert elsad.stat().st_ino != before, "a new file renamed into place, not the old one overwritten"
    assert not [n for n in os.listdir(elsad.parent) if ".new." in n], "no staging file left behind"


def test_daemon_reload_only_where_systemd_runs(installed):
    _, r, _ = installed
    if os.path.isdir("/run/systemd/system"):
        assert "outside /etc/systemd/system: no daemon-reload" in r.stdout
    else:
        assert "systemd is not running as PID 1 here" in r.stdout


def test_a_missing_build_is_named(tmp_path):
    r = subprocess.run([INSTALL_UNITS, "--prefix", str(tmp_path / "p"), "--dest", str(tmp_path / "u"),
                        "--sysctl-dir", str(tmp_path / "s"), "--from", str(tmp_path / "no-build")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "elsad not found in" in r.stderr and "cmake --build" in r.stderr
    assert not (tmp_path / "u").exists(), "nothing installed half way"


def test_relative_or_odd_paths_are_refused(tmp_path):
    for flag, path in (("--prefix", "usr/local"), ("--dest", "/tmp/a b")):
        r = subprocess.run([INSTALL_UNITS, flag, path], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and f"{flag} {path}: give an absolute path" in r.stderr
