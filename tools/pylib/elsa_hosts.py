"""Simulated hosts on one machine: network namespaces joined by a switch, for migration tests,
the demo and benchmarks.

Each host is a network namespace (`PREFIX-hN`) with one interface, `eth0`, at 10.213.X.N/24,
plugged into a bridge that lives in a namespace of its own (`PREFIX-sw`), so nothing is added to
the machine's own network: the private addresses exist inside those namespaces only. A link rate
is a tbf qdisc on every host's eth0 (netem does not exist on these kernels, so there is no delay
or loss emulation). On real machines each host is a machine and nothing here is needed.
"""

import contextlib
import ctypes
import ipaddress
import os
import re
import signal
import subprocess

_CLONE_NEWNET = 0x40000000


class HostsError(RuntimeError):
    pass


def _run(cmd, check=True, timeout=20):
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HostsError(f"`{' '.join(map(str, cmd))}` took longer than {timeout} s") from None
    if check and p.returncode != 0:
        raise HostsError(f"`{' '.join(map(str, cmd))}` exited {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def _namespaces():
    out = _run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def parse_rate(rate):
    """'10gbit', '1gbit', '500mbit' -> bits per second (None for None)."""
    if rate is None:
        return None
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1}
    for unit, scale in units.items():
        if rate.endswith(unit):
            try:
                return float(rate[: -len(unit)]) * scale
            except ValueError:
                break
    raise HostsError(f"link rate {rate!r} is not a number followed by gbit, mbit or kbit")


class SimulatedHosts:
    """`count` hosts named h1..hN; `subnet` picks 10.213.<subnet>.0/24 so parallel users differ."""

    def __init__(self, count=2, prefix="elsa", subnet=0, mtu=1500):
        if not 1 <= count <= 32:
            raise HostsError("between 1 and 32 hosts")
        if not 0 <= subnet <= 255:
            raise HostsError("subnet is the third octet: 0..255")
        if len(prefix) > 8 or not prefix.replace("-", "").isalnum():
            raise HostsError("prefix: up to 8 letters, digits or dashes (it goes into interface names)")
        self.count, self.prefix, self.mtu = count, prefix, mtu
        self.network = ipaddress.ip_network(f"10.213.{subnet}.0/24")
        self.rate = None

    # Names and addresses -------------------------------------------------------------------------
    @property
    def names(self):
        return [f"h{i}" for i in range(1, self.count + 1)]

    def netns(self, host):
        return f"{self.prefix}-{host}"

    @property
    def switch(self):
        return f"{self.prefix}-sw"

    def address(self, host):
        return str(self.network.network_address + int(host[1:]))

    def owns(self, address):
        """True for an address of one of these hosts: the only places tests may send traffic."""
        return address in {self.address(h) for h in self.names}

    def exec_prefix(self, host):
        return ["ip", "netns", "exec", self.netns(host)]

    @contextlib.contextmanager
    def inside(self, host):
        """Runs the block's networking as `host`: sockets made in it belong to that host's network
        (and keep working after it). Switches only the calling thread."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.netns(host)}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise HostsError(f"setns into {self.netns(host)}: {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                if libc.setns(own, _CLONE_NEWNET) != 0:
                    raise HostsError(f"setns back: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
            os.close(own)

    @classmethod
    def discover(cls, prefix="elsa"):
        """The hosts `PREFIX-h1..hN` made earlier (by `tools/hosts up`, another process): their
        count from the namespaces' names, their subnet and link rate from h1's eth0. None when
        there are none."""
        found = sorted(int(m.group(1)) for ns in _namespaces()
                       if (m := re.fullmatch(re.escape(prefix) + r"-h(\d+)", ns)))
        if not found:
            return None
        subnet = 0
        addr = _run(["ip", "-n", f"{prefix}-h1", "-4", "-o", "addr", "show", "dev", "eth0"], check=False).stdout
        if m := re.search(r"inet 10\.213\.(\d+)\.\d+/", addr):
            subnet = int(m.group(1))
        hosts = cls(max(found), prefix=prefix, subnet=subnet)
        qdisc = _run(["ip", "netns", "exec", f"{prefix}-h1", "tc", "qdisc", "show", "dev", "eth0"], check=False).stdout
        if m := re.search(r"\btbf\b.*?\brate (\S+)", qdisc):
            hosts.rate = m.group(1).lower()
        return hosts

    # Life cycle ----------------------------------------------------------------------------------
    def exists(self):
        present = _namespaces()
        return [ns for ns in [self.switch] + [self.netns(h) for h in self.names] if ns in present]

    def create(self):
        self.remove()
        try:
            _run(["ip", "netns", "add", self.switch])
            _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            _run(["ip", "-n", self.switch, "link", "set", "lo", "up"])
            for host in self.names:
                ns, port = self.netns(host), f"{self.prefix}-{host}"[:15]
                _run(["ip", "netns", "add", ns])
                # Both ends are made inside the namespaces, never in the machine's own.
                _run(["ip", "-n", self.switch, "link", "add", port, "mtu", self.mtu, "type", "veth", "peer", "name",
                      "eth0", "netns", ns, "mtu", self.mtu])
                _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{self.address(host)}/{self.network.prefixlen}", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except Exception:
            self.remove()
            raise
        return self

    def shape(self, rate):
        """A link rate for every host's outgoing traffic ('10gbit', '1gbit'; None: unshaped)."""
        bits = parse_rate(rate)
        for host in self.names:
            _run(["ip", "netns", "exec", self.netns(host), "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
            if bits is None:
                continue
            # The bucket holds 2 ms at the rate (at least 64 KiB, one GSO packet).
            burst = max(65536, int(bits / 8 * 0.002))
            _run(["ip", "netns", "exec", self.netns(host), "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
                  rate, "burst", burst, "latency", "10ms"])
        self.rate = rate

    def set_link(self, host, up):
        """Brings a host's link down or up (a cable pulled), for fault tests."""
        _run(["ip", "-n", self.netns(host), "link", "set", "eth0", "up" if up else "down"])

    def remove(self):
        """Ends every process left in the hosts' namespaces, then deletes them. Idempotent."""
        for ns in self.exists():
            for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", ns], check=False)

    def __enter__(self):
        return self.create()

    def __exit__(self, *_):
        self.remove()
