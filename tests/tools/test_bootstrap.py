"""tools/bootstrap takes the Debian mirror for CRIU's source from the machine's own apt
configuration (deb822 and one-line sources alike) and names no host itself."""

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOTSTRAP = os.path.join(REPO, "tools", "bootstrap")


@pytest.fixture
def apt_sources(tmp_path):
    """An apt configuration whose only sources are the files a test writes into `parts`."""
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::Etc::SourceList "{tmp_path / "sources.list"}";\n'
                    f'Dir::Etc::SourceParts "{parts}";\n')
    (tmp_path / "sources.list").write_text("")

    def print_mirror(extra_env=None):
        env = {k: v for k, v in os.environ.items() if k != "ELSA_DEBIAN_MIRROR"}
        env.update(APT_CONFIG=str(conf), **(extra_env or {}))
        return subprocess.run([BOOTSTRAP, "--print-mirror"], env=env, capture_output=True, text=True, timeout=60)

    return tmp_path, parts, print_mirror


def test_mirror_comes_from_a_deb822_source(apt_sources):
    _, parts, print_mirror = apt_sources
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    r = print_mirror()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://mirror.test/debian"


def test_mirror_comes_from_a_one_line_source(apt_sources):
    root, _, print_mirror = apt_sources
    (root / "sources.list").write_text("# a proxy in front of the archive\n"
                                       "deb [arch=amd64] http://apt-proxy.test:3142/debian bookworm main contrib\n")
    r = print_mirror()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://apt-proxy.test:3142/debian"


def test_no_source_for_the_release_is_a_clear_error(apt_sources):
    _, parts, print_mirror = apt_sources
    (parts / "security.list").write_text("deb http://security.mirror.test/debian-security bookworm-security main\n")
    r = print_mirror()
    assert r.returncode != 0
    assert "no Debian archive for 'bookworm'" in r.stderr and "ELSA_DEBIAN_MIRROR" in r.stderr


def test_an_explicit_mirror_wins(apt_sources):
    _, _, print_mirror = apt_sources
    r = print_mirror({"ELSA_DEBIAN_MIRROR": "http://chosen.test/debian"})
    assert r.returncode == 0 and r.stdout.strip() == "http://chosen.test/debian", r.stderr


def test_the_bootstrap_names_no_host_and_pins_the_criu_tarball():
    text = open(BOOTSTRAP).read()
    assert not re.search(r"\b[a-z]+://", text), "tools/bootstrap must take every URL from the machine's apt configuration"
    pinned = re.search(r"^criu_pinned_sha256=([0-9a-f]{64})$", text, re.M)
    assert pinned, "the CRIU tarball's sha256 must be pinned in tools/bootstrap"
