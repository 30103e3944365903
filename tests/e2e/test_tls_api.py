"""The agent's API over TCP with TLS 1.3 (elsad --api-listen): certificates from tools/elsa-ca,
tokens with scopes, mutual TLS; every way in without valid credentials is refused with a message
that says why, and the agent keeps serving. 127.0.0.1 only."""

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from elsa_agent import SESSION_PATH, ElsaAgent
from elsa_jupyter import free_port

ELSA_CA = os.path.join(REPO, "tools", "elsa-ca")


class Credentials:
    """A CA with the agent's certificate (127.0.0.1) and a client one, a stranger CA with its own
    client, and the agent's token file: hub1 (hub) and ops (admin)."""

    def __init__(self, root):
        self.root = str(root)
        ca, other = os.path.join(self.root, "ca"), os.path.join(self.root, "other")
        for args in (["init", ca], ["issue", ca, "agent", "--ip", "127.0.0.1"], ["issue", ca, "hub1", "--client"],
                     ["issue", ca, "ops", "--client"], ["init", other], ["issue", other, "stranger", "--client"]):
            subprocess.run([ELSA_CA, *args], check=True, capture_output=True, text=True)
        self.ca = os.path.join(ca, "ca.crt")
        self.other_ca = os.path.join(other, "ca.crt")
        self.cert = lambda name, d=ca: (os.path.join(d, name + ".crt"), os.path.join(d, name + ".key"))
        self.stranger = self.cert("stranger", other)
        self.hub_token = self._token_file("hub.token")
        self.admin_token = self._token_file("admin.token")
        self.tokens = os.path.join(self.root, "tokens")
        with open(self.tokens, "w") as f:
            f.write(f"# SCOPE NAME TOKEN\nhub hub1 {self.read(self.hub_token)}\nadmin ops {self.read(self.admin_token)}\n")
        os.chmod(self.tokens, 0o600)

    def _token_file(self, name):
        path = os.path.join(self.root, name)
        token = subprocess.run([ELSA_CA, "token"], check=True, capture_output=True, text=True).stdout.strip()
        assert len(token) >= 32, token
        with open(path, "w") as f:
            f.write(token + "\n")
        return path

    @staticmethod
    def read(path):
        with open(path) as f:
            return f.read().strip()


@pytest.fixture
def creds(tmp_path):
    return Credentials(tmp_path)


def tls_flags(creds, port, client_ca=True, tokens=True):
    cert, key = creds.cert("agent")
    flags = ["--api-listen", f"127.0.0.1:{port}", "--api-cert", cert, "--api-key", key, "--api-admin-cn", "ops"]
    if client_ca:
        flags += ["--api-client-ca", creds.ca]
    else:
        flags.remove("--api-admin-cn")
        flags.remove("ops")
    if tokens:
        flags += ["--api-tokens", creds.tokens]
    return flags


@pytest.fixture
def tls_agent(bin_dir, creds):
    port = free_port()
    with ElsaAgent(bin_dir, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), extra_args=tls_flags(creds, port)) as a:
        a.api_address = f"127.0.0.1:{port}"
        yield a


def remote(agent, *args, address=None, ca=None, token_file=None, cert=None, check=False):
    """`elsa --agent` from outside: no --socket, no ELSA_SOCKET."""
    cmd = [os.path.join(agent.bin_dir, "elsa"), "--agent", address or agent.api_address]
    if ca:
        cmd += ["--ca", ca]
    if token_file:
        cmd += ["--token-file", token_file]
    if cert:
        cmd += ["--cert", cert[0], "--key", cert[1]]
    env = {"PATH": SESSION_PATH, "HOME": agent.env["HOME"]}
    result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300, env=env)
    assert not check or result.returncode == 0, result.stderr
    return result


def remote_json(agent, *args, **kwargs):
    return json.loads(remote(agent, "--json", *args, check=True, **kwargs).stdout)


def test_ps_over_tls_with_a_token_or_a_client_certificate(tls_agent, creds):
    tls_agent.run_session("sleeper", "/bin/sleep", "1000")
    by_token = remote_json(tls_agent, "ps", ca=creds.ca, token_file=creds.hub_token)
    assert [s["name"] for s in by_token] == ["sleeper"]
    by_cert = remote_json(tls_agent, "ps", ca=creds.ca, cert=creds.cert("hub1"))
    assert [s["name"] for s in by_cert] == ["sleeper"]
    assert f"agent: {tls_agent.api_address}" in remote(tls_agent, "agent", ca=creds.ca, token_file=creds.hub_token,
                                                       check=True).stdout


def assert_still_serving(agent, creds):
    assert remote_json(agent, "ps", ca=creds.ca, token_file=creds.hub_token) is not None
    assert agent.cli("ps").returncode == 0


def test_every_way_in_without_credentials_is_refused_clearly(tls_agent, creds):
    silent = socket.create_connection(("127.0.0.1", int(tls_agent.api_address.split(":")[1])))  # holds no one up
    try:
        cases = {
            "no certificate, no token": (dict(ca=creds.ca), "refused the request: no credentials"),
            "a wrong token": (dict(ca=creds.ca, token_file=creds.admin_token + ".wrong"), "refused the token: no client has this token"),
            "a certificate from another CA": (dict(ca=creds.ca, cert=creds.stranger), "refused our client certificate"),
            "an agent certificate from an unknown CA": (dict(ca=creds.other_ca, token_file=creds.hub_token),
                                                       "does not verify against " + creds.other_ca),
            # "127.1" reaches 127.0.0.1 without a resolver (a minimal root has no /etc/hosts for
            # "localhost") but is a host name to the certificate check, one the certificate lacks.
            "a host name the certificate does not name": (
                dict(ca=creds.ca, token_file=creds.hub_token, address=tls_agent.api_address.replace("127.0.0.1", "127.1")),
                "hostname mismatch"),
        }
        with open(creds.admin_token + ".wrong", "w") as f:
            f.write("not-the-token-0123456789abcdef\n")
        for what, (kwargs, expected) in cases.items():
            result = remote(tls_agent, "ps", **kwargs)
            assert result.returncode != 0, what
            assert expected in result.stderr, f"{what}: {result.stderr}"
            assert_still_serving(tls_agent, creds)
        # A plain-TCP client gets one plain JSON line saying why, and nothing is served.
        with socket.create_connection(("127.0.0.1", int(tls_agent.api_address.split(":")[1])), timeout=15) as plain:
            plain.sendall(b'{"op":"ps"}\n')
            reply = json.loads(plain.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"]["code"] == "unauthenticated", reply
        assert "TLS 1.3 only" in reply["error"]["message"], reply
        assert_still_serving(tls_agent, creds)
    finally:
        silent.close()


def test_run_needs_admin(tls_agent, creds):
    by_token = remote(tls_agent, "run", "--name", "x", "--", "/bin/sleep", "1000", ca=creds.ca, token_file=creds.hub_token)
    assert by_token.returncode != 0
    assert "token 'hub1' has scope hub; run needs admin" in by_token.stderr, by_token.stderr
    by_cert = remote(tls_agent, "run", "--name", "x", "--", "/bin/sleep", "1000", ca=creds.ca, cert=creds.cert("hub1"))
    assert "certificate 'hub1' has scope hub; run needs admin" in by_cert.stderr, by_cert.stderr
    assert "x" not in tls_agent.sessions()
    remote(tls_agent, "run", "--name", "by-admin", "--", "/bin/sleep", "1000", ca=creds.ca, token_file=creds.admin_token,
           check=True)
    remote(tls_agent, "run", "--name", "by-admin-cert", "--", "/bin/sleep", "1000", ca=creds.ca, cert=creds.cert("ops"),
           check=True)
    assert {"by-admin", "by-admin-cert"} <= set(tls_agent.sessions())


def test_checkpoint_and_restore_through_the_tls_api(tls_agent, creds):
    started = tls_agent.run_session("sleeper", "/bin/sleep", "1000")
    tls_agent.pids_seen.add(started["pid"])
    report = remote_json(tls_agent, "checkpoint", "sleeper", ca=creds.ca, token_file=creds.hub_token)
    checkpoint = report["checkpoint"]["id"]
    assert "sleeper" not in tls_agent.sessions() or tls_agent.sessions()["sleeper"]["state"] != "running"
    restored = remote_json(tls_agent, "restore", checkpoint, ca=creds.ca, token_file=creds.hub_token)
    tls_agent.pids_seen.add(restored["session"]["pid"])
    assert tls_agent.sessions()["sleeper"]["state"] == "running"


def test_the_hub_package_lists_sessions_over_tls(tls_agent, creds):
    sys.path.insert(0, os.path.join(REPO, "tools", "jupyterhub"))
    from elsa_jupyterhub import config as hub_config
    from elsa_jupyterhub.agent import AgentClient, AgentError

    tls_agent.run_session("sleeper", "/bin/sleep", "1000")
    entry = {"name": "h1", "address": "127.0.0.1", "api": f"tls://{tls_agent.api_address}", "ca": creds.ca,
             "token_file": creds.hub_token}
    host = hub_config.parse({"hosts": [entry]}).hosts[0]
    assert list(asyncio.run(AgentClient(host).sessions())) == ["sleeper"]
    cert, key = creds.cert("hub1")
    by_cert = hub_config.parse({"hosts": [dict(entry, token_file="", cert=cert, key=key)]}).hosts[0]
    assert list(asyncio.run(AgentClient(by_cert).sessions())) == ["sleeper"]
    with pytest.raises(AgentError, match="run needs admin"):
        asyncio.run(AgentClient(host).call("run", name="x", argv=["/bin/true"]))
    with pytest.raises(hub_config.ConfigError, match="plain TCP is never offered"):
        hub_config.parse({"hosts": [dict(entry, api=f"tcp://{tls_agent.api_address}")]})


@pytest.mark.parametrize("flags, expected", [
    (lambda c, p: ["--api-listen", f"127.0.0.1:{p}", "--api-tokens", c.tokens], "--api-cert FILE --api-key FILE"),
    (lambda c, p: tls_flags(c, p, client_ca=False, tokens=False), "never served without one"),
])
def test_the_agent_refuses_a_tls_api_it_cannot_secure(bin_dir, creds, flags, expected):
    result = subprocess.run([os.path.join(bin_dir, "elsad"), *flags(creds, free_port())], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_the_agent_refuses_a_token_file_others_can_read(bin_dir, creds, agent_factory):
    os.chmod(creds.tokens, 0o644)
    with pytest.raises(RuntimeError, match="chmod 600"):
        agent_factory(criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), extra_args=tls_flags(creds, free_port()))


def test_the_agent_refuses_a_private_key_others_can_read(bin_dir, creds, agent_factory):
    key = tls_flags(creds, 0)[tls_flags(creds, 0).index("--api-key") + 1]
    os.chmod(key, 0o644)
    with pytest.raises(RuntimeError, match="--api-key .* chmod 600"):
        agent_factory(criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), extra_args=tls_flags(creds, free_port()))
