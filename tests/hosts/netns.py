"""Test hosts: Linux network namespaces joined by veth links to one bridge.

Each host is a namespace with one interface (``eth0``) on a private /24 this harness picks at
random from 10.200.0.0/13; the bridge lives in a namespace of its own, so the machine's own
network is never touched. A host's link is cut and restored at the bridge end
(:meth:`TestNet.link_down` / :meth:`TestNet.link_up`), which is what a pulled cable or a dead
switch port looks like to both sides. Everything is removed on exit, on an exception, at
interpreter exit and on SIGTERM; :func:`unavailable` says in one line why namespaces cannot be
made here (not root, no ``ip``), for tests to skip with.

Tests import it; a soak benchmark is meant to share it.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Sequence
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
        # unique among live networks (pid + random), short enough for 15-character veth names
        self.tag = f"{os.getpid() % 1000:03d}{random.randrange(10000):04d}"
        self.subnet = f"10.{200 + random.randrange(8)}.{random.randrange(256)}"
        self.switch = f"fvs{self.tag}-sw"
        self.hosts = {name: f"fvs{self.tag}-{i}" for i, name in enumerate(hosts)}
        self._ports = {name: f"s{self.tag}{i}" for i, name in enumerate(hosts)}
        self._address = {name: f"{self.subnet}.{i + 1}" for i, name in enumerate(hosts)}
        self._procs: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []  # namespaces this instance created, deleted by close()

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
        self._add_namespace(self.switch)
        self._in(self.switch, "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "link", "set", "br0", "up")
        for name, ns in self.hosts.items():
            self._add_namespace(ns)
            switch_end = self._ports[name]
            # made inside the switch namespace with its peer placed straight into the host's:
            # no interface ever exists in the machine's own network namespace
            self._in(
                self.switch, "link", "add", switch_end, "type", "veth",
                "peer", "name", "eth0", "netns", ns,
            )  # fmt: skip
            self._in(ns, "addr", "add", f"{self._address[name]}/24", "dev", "eth0")
            self._in(ns, "link", "set", "eth0", "up")
            self._in(ns, "link", "set", "lo", "up")
            self._in(self.switch, "link", "set", switch_end, "master", "br0")
            self._in(self.switch, "link", "set", switch_end, "up")

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

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

    def close(self, wait: bool = True) -> None:
        """Kill what runs in the namespaces, then delete the namespaces this instance made
        (their veths go with them). ``wait=False`` from a signal handler."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                if wait:
                    proc.wait(timeout=10)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        _LIVE.discard(self)


def _close_all(wait: bool = True) -> None:
    for net in list(_LIVE):
        net.close(wait=wait)


def _on_sigterm(signum: int, frame: object) -> None:
    _close_all(wait=False)  # no blocking wait inside a signal handler
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
