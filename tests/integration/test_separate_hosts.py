"""The federation across separate hosts: a server and five clients, each in its own network
namespace with its own address, over mTLS that verifies the server's address, one full secure
round; then a client whose link is cut mid-run rejoins a later round on its own.

Skips with one line where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from fedvpa_secure.cli import main as cli_main
from fedvpa_secure.commands.simulate import prepare_run
from tests.hosts.netns import TestNet, leftover_namespaces, unavailable
from tests.integration.fedkit import CLI, ENV, simulate_args

REASON = unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REASON is not None, reason=f"no test hosts: {REASON}"),
]
PORT = 50051
CLIENTS = 5


class Hosts:
    """A prepared federation (simulate's files) whose server and clients run on test hosts."""

    def __init__(self, tmp: Path, net: TestNet, rounds: int, **kw: object) -> None:
        self.net = net
        self.out = tmp / "run"
        self.server_ip = net.address("server")
        args = simulate_args(self.out, tmp / "cache", CLIENTS, rounds, **kw)
        args.server_addresses = [self.server_ip]  # the certificate names the server's address
        self.server_toml, self.ids, self.files = prepare_run(args)
        # it listens on every interface of its host; clients dial the address the cert names
        text = self.server_toml.read_text().replace("127.0.0.1:0", f"0.0.0.0:{PORT}")
        self.server_toml.write_text(text)
        self.logs = self.out / "logs"
        self.logs.mkdir(exist_ok=True)

    def start_server(self) -> subprocess.Popen:
        return self.net.popen(
            "server",
            [*CLI, "server", "--config", str(self.server_toml)],
            stdout=open(self.logs / "server.log", "a"),
            stderr=subprocess.STDOUT,
            env=ENV,
        )

    def start_client(self, cid: str) -> subprocess.Popen:
        argv = [*CLI, "client", "--server", f"{self.server_ip}:{PORT}", "--client-id", cid]
        argv += ["--config", str(self.files[cid]), "--data", str(self.files[f"data:{cid}"])]
        return self.net.popen(
            cid,
            argv,
            stdout=open(self.logs / f"{cid}.log", "a"),
            stderr=subprocess.STDOUT,
            env=ENV,
        )

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()


@pytest.fixture
def net():
    names = ["server", *[f"c{i:03d}" for i in range(CLIENTS)]]
    with TestNet(names) as network:
        yield network
    assert not [ns for ns in leftover_namespaces() if network.tag in ns]


def test_a_secure_round_across_six_hosts_with_address_verification(
    tmp_path: Path, net: TestNet
) -> None:
    hosts = Hosts(tmp_path, net, rounds=1)
    server = hosts.start_server()
    clients = [hosts.start_client(cid) for cid in hosts.ids]
    try:
        assert server.wait(timeout=240) == 0, hosts.log("server")[-3000:]
        for proc in clients:
            assert proc.wait(timeout=60) == 0
    finally:
        _kill(clients)
    report = hosts.report()
    assert report["completed_rounds"] == 1 and report["secure"] is True
    assert report["rounds"][0]["clients"] == CLIENTS
    assert cli_main(["audit", str(hosts.out)]) == 0


def test_a_client_dialling_an_address_the_certificate_does_not_name_is_refused(
    tmp_path: Path, net: TestNet
) -> None:
    """Control for the test above: the same server, reached by a second address of its host
    that the certificate does not name, is refused at once (no retrying a bad certificate)."""
    hosts = Hosts(tmp_path, net, rounds=1)
    server = hosts.start_server()
    # the server's host also answers on its loopback; a client there dials 127.0.0.1
    argv = [*CLI, "client", "--server", f"127.0.0.1:{PORT}", "--client-id", hosts.ids[0]]
    argv += ["--config", str(hosts.files[hosts.ids[0]]), "--connect-timeout", "30"]
    _wait_listening(hosts, server)
    started = time.monotonic()
    refused = net.run("server", argv)
    server.kill()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "does not name the address dialled" in refused.stderr
    assert time.monotonic() - started < 15  # refused at once, not after the connect timeout


def _kill(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_listening(hosts: Hosts, server: subprocess.Popen, timeout: float = 120) -> None:
    """Until the server's log says it serves (it loads its learner first)."""
    deadline = time.monotonic() + timeout
    while "serving on" not in hosts.log("server"):
        assert server.poll() is None and time.monotonic() < deadline, hosts.log("server")[-2000:]
        time.sleep(0.2)


def _completed(hosts: Hosts) -> int:
    path = hosts.out / "checkpoints" / "state.json"
    try:
        return int(json.loads(path.read_text()).get("completed_rounds", 0))
    except (OSError, ValueError):
        return 0


def test_a_client_whose_link_is_cut_mid_run_rejoins_a_later_round(
    tmp_path: Path, net: TestNet
) -> None:
    """c004's link goes down after round 1 for longer than a stage deadline: the server goes on
    without it, and once the link is back it takes part again with no operator action."""
    hosts = Hosts(tmp_path, net, rounds=4, stage_deadline=8.0, straggler_factor=1.0)
    server = hosts.start_server()
    clients = {cid: hosts.start_client(cid) for cid in hosts.ids}
    deadline = time.monotonic() + 180
    while _completed(hosts) < 1 and time.monotonic() < deadline and server.poll() is None:
        time.sleep(0.2)
    net.link_down("c004")
    time.sleep(25)
    net.link_up("c004")
    try:
        assert server.wait(timeout=300) == 0, hosts.log("server")[-3000:]
        for proc in clients.values():
            proc.wait(timeout=60)
    finally:
        _kill(clients.values())
    rounds = hosts.report()["rounds"]
    sizes = [r["clients"] for r in rounds]
    assert len(rounds) == 4, sizes
    assert min(sizes) < CLIENTS, f"c004 was never missing: {sizes}"
    assert sizes[-1] == CLIENTS, f"c004 did not come back: {sizes}"
    assert clients["c004"].returncode == 0, hosts.log("c004")[-2000:]
    assert cli_main(["audit", str(hosts.out)]) == 0
