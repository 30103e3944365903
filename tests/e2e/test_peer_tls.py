"""Migration between two simulated hosts over mutual TLS, each agent with its own certificate from
tools/elsa-ca (elsad --peer-cert/--peer-key/--peer-ca, no shared secret): a session moves; a host
whose certificate another CA signed, or that the destination's --peer-allow does not name, cannot
move it, and it keeps running where it was."""

import os
import subprocess
import time

import pytest
from elsa_agent import ElsaAgent
from elsa_jupyter import JupyterServer
from test_checkpoint_restore import CHECK_ARRAY
from test_migrate import PEER_PORT, run_on_h1
from test_migrate_faults import CorruptingRelay, assert_running_on_h1

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ELSA_CA = os.path.join(REPO, "tools", "elsa-ca")
SESSION_MIB = 64


class Fleet:
    """A CA in DIR and an agent certificate per host, as an operator makes them."""

    def __init__(self, root, hosts):
        self.root, self.hosts = root, hosts
        self.ca_dir = os.path.join(root, "fleet-ca")
        subprocess.run([ELSA_CA, "init", self.ca_dir], check=True, capture_output=True)

    def issue(self, host, ca_dir=None, also_at=()):
        ca_dir = ca_dir or self.ca_dir
        ips = [a for h in (host, *also_at) for a in ("--ip", self.hosts.address(h))]
        subprocess.run([ELSA_CA, "issue", ca_dir, host, "--peer", *ips], check=True, capture_output=True)
        return os.path.join(ca_dir, f"{host}.crt"), os.path.join(ca_dir, f"{host}.key")


@pytest.fixture
def fleet(tmp_path, hosts):
    return Fleet(str(tmp_path), hosts)


def tls_agent(bin_dir, hosts, host, cert_key, ca, *extra):
    cert, key = cert_key
    return ElsaAgent(bin_dir, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), netns=hosts.netns(host),
                     extra_args=["--listen", f"{hosts.address(host)}:{PEER_PORT}", "--peer-cert", cert, "--peer-key",
                                 key, "--peer-ca", ca, *extra])


def fleet_ca(fleet):
    return os.path.join(fleet.ca_dir, "ca.crt")


def test_a_session_migrates_over_mutual_tls(hosts, bin_dir, workdir, fleet):
    ca = fleet_ca(fleet)
    with tls_agent(bin_dir, hosts, "h1", fleet.issue("h1"), ca) as a1, \
            tls_agent(bin_dir, hosts, "h2", fleet.issue("h2"), ca) as a2:
        assert "mutual TLS 1.3 as agent 'h2'" in a2.agent_log()
        server, kernel = run_on_h1(a1, hosts, workdir, mib=SESSION_MIB)
        report = a1.json("migrate", "alice", "--to", hosts.address("h2"))
        assert report["address"] == hosts.address("h2")
        assert a2.sessions()["alice"]["state"] == "running"
        assert "alice" not in a1.sessions()
        with hosts.inside("h1"):
            conn = JupyterServer(hosts.address("h2"), server.port, server.token).connect(kernel,
                                                                                         session_id="e2e-session")
        assert conn.eval(CHECK_ARRAY) == "True"
        conn.close()


def test_a_host_whose_certificate_another_ca_signed_cannot_migrate(hosts, bin_dir, workdir, fleet, tmp_path):
    other_ca = str(tmp_path / "other-ca")
    subprocess.run([ELSA_CA, "init", other_ca], check=True, capture_output=True)
    ca = fleet_ca(fleet)
    # h1 trusts the fleet's CA, but its own certificate comes from elsewhere.
    with tls_agent(bin_dir, hosts, "h1", fleet.issue("h1", ca_dir=other_ca), ca) as a1, \
            tls_agent(bin_dir, hosts, "h2", fleet.issue("h2"), ca) as a2:
        server, kernel = run_on_h1(a1, hosts, workdir, mib=SESSION_MIB)
        failed = a1.cli("migrate", "alice", "--to", hosts.address("h2"), check=False)
        assert failed.returncode != 0
        assert "running here" in failed.stderr, failed.stderr
        assert "refused our certificate" in failed.stderr, failed.stderr
        assert "alice" not in a2.sessions()
        assert "unable to get local issuer certificate" in a2.agent_log()
        assert_running_on_h1(a1, hosts, server, kernel)


def test_a_destination_whose_allowlist_forbids_the_source_refuses(hosts, bin_dir, workdir, fleet, tmp_path):
    allow = tmp_path / "peer-allow"
    allow.write_text("# h2 may send to h1, not the other way\nh2 -> h1\n")
    ca = fleet_ca(fleet)
    with tls_agent(bin_dir, hosts, "h1", fleet.issue("h1"), ca) as a1, \
            tls_agent(bin_dir, hosts, "h2", fleet.issue("h2"), ca, "--peer-allow", str(allow)) as a2:
        server, kernel = run_on_h1(a1, hosts, workdir, mib=SESSION_MIB)
        failed = a1.cli("migrate", "alice", "--to", hosts.address("h2"), check=False)
        assert failed.returncode != 0
        assert "running here" in failed.stderr, failed.stderr
        assert "agent 'h2' refuses channels from agent 'h1'" in failed.stderr, failed.stderr
        assert "alice" not in a2.sessions()
        assert "lets 'h1' send sessions to 'h2'" in a2.agent_log()
        assert_running_on_h1(a1, hosts, server, kernel)


def test_a_relay_flipping_one_encrypted_byte_fails_the_migration_and_the_session_stays(hosts, bin_dir, workdir,
                                                                                       fleet):
    """A man in the middle (a relay on h1 that h2's certificate also names, so the handshake
    passes) flips one bit of the ciphertext: TLS refuses the record, the migration fails and the
    session runs on h1 as before."""
    ca = fleet_ca(fleet)
    with tls_agent(bin_dir, hosts, "h1", fleet.issue("h1"), ca) as a1, \
            tls_agent(bin_dir, hosts, "h2", fleet.issue("h2", also_at=("h1",)), ca) as a2:
        server, kernel = run_on_h1(a1, hosts, workdir, mib=SESSION_MIB)
        relay = CorruptingRelay(hosts, (hosts.address("h2"), PEER_PORT), after=16 << 20)
        try:
            failed = a1.cli("migrate", "alice", "--to", f"{hosts.address('h1')}:{relay.port}", check=False)
        finally:
            relay.close()
        assert relay.flipped, "the relay damaged a record"
        assert failed.returncode != 0
        print(failed.stderr)
        assert "running here" in failed.stderr, failed.stderr
        deadline = time.monotonic() + 15
        while "failed authentication" not in a2.agent_log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "failed authentication" in a2.agent_log(), "h2 saw the damage: " + a2.agent_log()[-2000:]
        assert "alice" not in a2.sessions()
        assert_running_on_h1(a1, hosts, server, kernel)


def test_the_agent_refuses_a_peer_key_others_can_read(hosts, fleet, agent_factory):
    cert, key = fleet.issue("h1")
    os.chmod(key, 0o644)
    with pytest.raises(RuntimeError, match="--peer-key .* chmod 600"):
        agent_factory(criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"),
                      extra_args=["--peer-cert", cert, "--peer-key", key, "--peer-ca", fleet_ca(fleet)])
