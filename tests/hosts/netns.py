"""Test hosts: Linux network namespaces joined by veth links to one bridge.

Each host is a namespace with one interface (``eth0``) on a private /24 this harness picks at
random from 10.200.0.0/13; the bridge lives in a namespace of its own, so the machine's own
network is never touched. A host's link is cut and restored at the bridge end
(:meth:`TestNet.link_down` / :meth:`TestNet.link_up`), which is what a pulled cable or a dead
switch port looks like to both sides. Everything is removed on exit, on an exception, at
interpreter exit and on SIGTERM; :func:`unavailable` says in one line why namespaces cannot be
made here (not root, no ``ip``), for tests to skip with.

The benchmark ``benchmarks/chaos_soak.py`` and the tests share this module.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_LIVE: set[TestNet] = set()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can (probed, then removed)."""
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip`, which is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"fvs-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class TestNet:
    """A private network of named hosts; use as a context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self, hosts: Sequence[str]) -> None:
        if len(set(hosts)) != len(hosts) or not hosts or len(hosts) > 250:
            raise ValueError("give 1-250 distinct host names")
        self.tag = f"{os.getpid() % 100000:05d}{random.randrange(100):02d}"
        self.subnet = f"10.{200 + random.randrange(8)}.{random.randrange(256)}"
        self.switch = f"fvs{self.tag}-sw"
        self.hosts = {name: f"fvs{self.tag}-{i}" for i, name in enumerate(hosts)}
        self._ports = {name: f"s{self.tag}{i}" for i, name in enumerate(hosts)}
        self._address = {name: f"{self.subnet}.{i + 1}" for i, name in enumerate(hosts)}
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> TestNet:
        _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._in(self.switch, "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "link", "set", "br0", "up")
        for name, ns in self.hosts.items():
            _ip("netns", "add", ns)
            host_end, switch_end = f"h{self._ports[name][1:]}", self._ports[name]
            _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", switch_end, "netns", self.switch)
            self._in(ns, "link", "set", host_end, "name", "eth0")
            self._in(ns, "addr", "add", f"{self._address[name]}/24", "dev", "eth0")
            self._in(ns, "link", "set", "eth0", "up")
            self._in(ns, "link", "set", "lo", "up")
            self._in(self.switch, "link", "set", switch_end, "master", "br0")
            self._in(self.switch, "link", "set", switch_end, "up")

    @staticmethod
    def _in(ns: str, *args: str) -> None:
        _ip("-n", ns, *args)

    def address(self, host: str) -> str:
        """The host's IPv4 address on the test network."""
        return self._address[host]

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace; it is killed when the network closes."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[host], *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.hosts[host], *argv], capture_output=True, text=True
        )

    def link_down(self, host: str) -> None:
        """Cut the host's link at the switch: its packets go nowhere until :meth:`link_up`."""
        self._in(self.switch, "link", "set", self._ports[host], "down")

    def link_up(self, host: str) -> None:
        self._in(self.switch, "link", "set", self._ports[host], "up")

    def close(self) -> None:
        """Kill what runs in the namespaces, then delete them (veths go with them)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in [*self.hosts.values(), self.switch]:
            _ip("netns", "del", ns, check=False)
        _LIVE.discard(self)


def _close_all(*_: object) -> None:
    for net in list(_LIVE):
        net.close()


def _on_sigterm(signum: int, frame: object) -> None:
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(_close_all)
if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
    signal.signal(signal.SIGTERM, _on_sigterm)


def leftover_namespaces() -> list[str]:
    """Namespaces this harness made that still exist (for a cleanup test)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("fvs")]


__all__ = ["TestNet", "leftover_namespaces", "unavailable"]

if __name__ == "__main__":  # manual check: make two hosts and ping between them
    with TestNet(["a", "b"]) as net:
        print(net.run("a", ["ping", "-c", "1", "-W", "1", net.address("b")]).stdout)
        print(Path("/run/netns").exists())
