"""``fedvpa-secure simulate``: certificates, a server and N client processes on loopback.

Leaves ``RUN/`` with ``report.json`` (the learner's metrics on the unseen evaluation users),
``ledger/`` (the server's user-level ledger: one entry per round with ``--user-dp-epsilon``,
written before the round is unmasked), every client's ledger under ``clients/``,
``checkpoints/``, ``rounds.json``, ``training.png`` and the logs of every process under
``logs/``. ``fedvpa-secure audit RUN`` verifies every ledger it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from fedvpa_secure.commands.argtypes import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from fedvpa_secure.config import HEADS, POSTERIORS, PROTOCOLS
from fedvpa_secure.errors import ConfigError, FedVPAError

DEFAULT_USER_EPSILON = 8.0
"""simulate's user-level target; the clients' default policy accepts it (their own budget)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a real secure federation on loopback (server + N client processes)",
        description="Make certificates, start the server and N client processes on 127.0.0.1, "
        "show progress, and leave RUN/ with report.json, ledgers, checkpoints and plots.",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--clients",
        type=positive_int,
        default=5,
        help="client processes (the default policy needs >= 5)",
    )
    p.add_argument("--clients-per-round", type=non_negative_int, default=0, help="0: every client")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--protocol", choices=PROTOCOLS, default="synthetic")
    p.add_argument("--data", default=None, help="HH-RLHF folder (p1/p2/p3)")
    p.add_argument("--method", default="fedvpa-gp")
    p.add_argument("--backbone", default="all-MiniLM-L6-v2")
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument(
        "--mode",
        choices=("frozen", "lora"),
        default="frozen",
        help="frozen: cached backbone embeddings; lora: train LoRA adapters of the backbone",
    )
    # left out: the learner's dataclass defaults (the encoder posterior, the MLP head, no gate)
    p.add_argument(
        "--posterior",
        choices=POSTERIORS,
        default=None,
        help="encoder, or likelihood (the E-step of the p3 recipe; prototypes needed, no "
        "record-level DP: pass --dp-epsilon 0)",
    )
    p.add_argument("--head", choices=HEADS, default=None, help="reward head: mlp or linear")
    p.add_argument(
        "--domain-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="route each pair by its prompt's domain (HH-RLHF protocols)",
    )
    p.add_argument("--pairs-per-client", type=positive_int, default=48)
    p.add_argument("--eval-clients", type=positive_int, default=6)
    p.add_argument("--local-steps", type=positive_int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-optimizer", choices=("avg", "adam"), default=None)
    p.add_argument("--plain", action="store_true", help="no secure aggregation (baseline only)")
    p.add_argument(
        "--dp-epsilon",
        type=non_negative_float,
        default=8.0,
        help="record-level DP-SGD target epsilon per client over the run (0: no DP)",
    )
    p.add_argument("--dp-delta", type=probability, default=1e-5)
    g = p.add_argument_group(
        "user-level DP (distributed noise under secure aggregation; the server's ledger)"
    )
    g.add_argument(
        "--user-dp-epsilon",
        type=non_negative_float,
        default=None,
        help=f"user-level target epsilon over the run, towards the server (default "
        f"{DEFAULT_USER_EPSILON:g}, 0 with --plain; 0: off, which the "
        "clients' policy then has to allow); each client clips its whole update and adds an "
        "integer noise share before masking",
    )
    g.add_argument(
        "--user-dp-clip", type=positive_float, default=1.0, help="whole-update clip norm S"
    )
    g.add_argument(
        "--user-dp-noise", choices=("discrete_gaussian", "skellam"), default="discrete_gaussian"
    )
    g.add_argument(
        "--user-dp-min-survivors",
        type=positive_int,
        default=None,
        help="t_min the noise is calibrated to; a round with fewer survivors aborts (default: "
        "the clients' policy floor, 4, or the clients per round when fewer)",
    )
    p.add_argument("--stage-deadline", type=positive_float, default=30.0)
    p.add_argument(
        "--timeout", type=positive_float, default=3600.0, help="give up after this many seconds"
    )
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.set_defaults(func=run)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(path: Path, tables: dict[str, dict[str, object]]) -> Path:
    """Write a small TOML file ('' is the root table; dotted names are nested tables)."""
    lines: list[str] = []
    for name, values in tables.items():
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).lstrip() + "\n")
    return path


def _given_model_fields(args: argparse.Namespace) -> dict[str, object]:
    """The model fields given on the command line (``getattr``: namespaces built by hand)."""
    given = {name: getattr(args, name, None) for name in ("posterior", "head", "domain_gate")}
    return {k: v for k, v in given.items() if v is not None}


def prepare_run(args: argparse.Namespace) -> tuple[Path, list[str], dict[str, Path]]:
    """Certs, shards and config files; returns (server.toml, client ids, client.toml paths)."""
    from fedvpa_secure.client.shards import write_client_shards
    from fedvpa_secure.commands.certs import client_ids
    from fedvpa_secure.server.learner import load_run_data
    from fedvpa_secure.server.settings import experiment_from_dict
    from fedvpa_secure.transport.pki import (
        LOOPBACK_ADDRESSES,
        client_files,
        make_loopback_federation,
    )

    out = Path(args.out).resolve()
    if (out / "checkpoints" / "state.json").exists():
        raise ConfigError(f"{out} already holds a run; choose a fresh --out")
    if args.clients < 3:
        raise ConfigError(f"--clients={args.clients} is invalid: secure aggregation needs >= 3")
    ids = client_ids(args.clients)
    certs = out / "certs"  # the operator's (CA, server) folder: no client private key
    keys = {cid: out / "clients" / cid / "keys" for cid in ids}  # each client's own
    make_loopback_federation(certs, keys, getattr(args, "server_addresses", LOOPBACK_ADDRESSES))
    per_round = args.clients_per_round or args.clients
    experiment = {
        "method": args.method,
        "device": "cpu",
        "cache_dir": str(Path(args.cache_dir).resolve()),
        "model": {
            "backbone": args.backbone,
            "mode": getattr(args, "mode", "frozen"),
            "max_length": args.max_length,
            **_given_model_fields(args),
        },
        "train": {
            "rounds": args.rounds,
            "clients_per_round": per_round,
            "local_steps": args.local_steps,
            "seed": args.seed,
            **({"server_optimizer": args.server_optimizer} if args.server_optimizer else {}),
        },
        "data": {
            "protocol": args.protocol,
            "data_dir": args.data,
            "n_clients": args.clients,
            "n_eval_clients": args.eval_clients,
            "pairs_per_client": args.pairs_per_client,
            "eval_pairs_per_client": args.pairs_per_client,
        },
    }
    if args.dp_epsilon:
        experiment["dp"] = {"target_epsilon": args.dp_epsilon, "delta": args.dp_delta}
    cfg = experiment_from_dict(experiment)
    fed = load_run_data(cfg)
    shards = write_client_shards(fed.train_clients, out / "data", ids)
    tables: dict[str, dict[str, object]] = {
        "": {
            "address": "127.0.0.1:0",
            "run_dir": str(out),
            "registry": str(certs / "registry.json"),
            "run_id": out.name,
        },
        "tls": {
            "cert": str(certs / "server.pem"),
            "key": str(certs / "server.key"),
            "ca": str(certs / "ca.pem"),
        },
        "rounds": {
            "rounds": args.rounds,
            "clients_per_round": per_round,
            "min_survivors": 3,
            "secure": not args.plain,
            "stage_deadline_s": args.stage_deadline,
            "train_deadline_s": max(600.0, args.stage_deadline),
            "join_timeout_s": 300.0,
            **(
                {"straggler_factor": args.straggler_factor}
                if getattr(args, "straggler_factor", None) is not None
                else {}
            ),
        },
        "experiment": {k: v for k, v in experiment.items() if not isinstance(v, dict)},
    }
    user_dp = _user_dp_table(args, per_round)
    if user_dp:
        tables["dp"] = user_dp
    for section in ("model", "train", "data", "objective", "dp"):
        if section in experiment:
            tables[f"experiment.{section}"] = experiment[section]  # type: ignore[assignment]
    server_toml = write_toml(out / "server.toml", tables)
    policy = demo_policy(args, per_round)
    if policy:
        print(f"simulate: the clients' privacy policy is relaxed for this run: {policy}")
    from fedvpa_secure.client.policy import PrivacyPolicy

    print("each client's privacy policy (it logs it at start-up and declines tasks asking less):")
    for line in PrivacyPolicy.from_table(policy).describe():
        print(f"  {line}")
    client_tomls = {}
    for cid in ids:
        f = client_files(keys[cid])
        client_tomls[cid] = write_toml(
            out / "clients" / cid / "client.toml",
            {
                "": {
                    "registry": str(certs / "registry.json"),
                    "state_dir": str(out / "clients" / cid),
                    "device": "cpu",
                },
                "tls": {
                    "cert": str(f.cert),
                    "key": str(f.key),
                    "ca": str(f.ca),
                    "identity": str(f.identity),
                },
                **({"policy": policy} if policy else {}),
            },
        )
    return server_toml, ids, {**client_tomls, **{f"data:{k}": v for k, v in shards.items()}}


def user_dp_epsilon(args: argparse.Namespace) -> float:
    """The user-level target: the flag, else the default (0 for a ``--plain`` baseline)."""
    given = getattr(args, "user_dp_epsilon", None)
    if given is None:
        return 0.0 if args.plain else DEFAULT_USER_EPSILON
    return float(given)


def user_dp_min_survivors(args: argparse.Namespace, per_round: int) -> int:
    """t_min: the flag, else the clients' policy floor (at most the clients per round)."""
    from fedvpa_secure.client.policy import PrivacyPolicy

    given = getattr(args, "user_dp_min_survivors", None)
    if given is not None:
        return int(given)
    return max(3, min(PrivacyPolicy().user_min_survivors, per_round))


def _user_dp_table(args: argparse.Namespace, per_round: int) -> dict[str, object]:
    """server.toml's ``[dp]`` table for ``--user-dp-epsilon`` (empty when it is off).

    ``getattr`` defaults keep namespaces built by hand (tests) without the new flags working.
    """
    epsilon = user_dp_epsilon(args)
    if not epsilon:
        return {}
    if args.plain:
        raise ConfigError("--user-dp-epsilon needs secure aggregation: drop --plain")
    t_min = user_dp_min_survivors(args, per_round)
    if t_min > per_round:
        raise ConfigError(
            f"--user-dp-min-survivors={t_min} is invalid: expected <= clients per round "
            f"({per_round})"
        )
    return {
        "epsilon_max": epsilon,
        "delta": args.dp_delta,
        "target_epsilon": epsilon,
        "clip_norm": float(getattr(args, "user_dp_clip", 1.0)),
        "noise": str(getattr(args, "user_dp_noise", "discrete_gaussian")),
        "min_survivors": t_min,
    }


def demo_policy(args: argparse.Namespace, per_round: int) -> dict[str, object]:
    """The ``[policy]`` keys that this run's flags relax below the clients' safe defaults.

    ``simulate`` plays every party on one machine, so what the operator asks of the server is
    what the clients are told to accept; with the default flags the table is empty and every
    client runs its default policy. ``getattr``: namespaces built by hand (tests).
    """
    from fedvpa_secure.client.policy import PrivacyPolicy

    safe = PrivacyPolicy()
    relaxed: dict[str, object] = {}
    if args.plain:
        relaxed["allow_plain"] = True
    if per_round < safe.min_clients:
        relaxed["min_clients"] = per_round
    threshold = max((2 * per_round) // 3 + 1, 3)
    if threshold < safe.min_threshold:
        relaxed["min_threshold"] = threshold
    user_epsilon = user_dp_epsilon(args)
    if not user_epsilon:
        relaxed["require_user_dp"] = False
    else:
        if user_epsilon > safe.user_epsilon:
            relaxed["user_epsilon"] = user_epsilon
        clip = float(getattr(args, "user_dp_clip", safe.user_max_clip))
        if clip > safe.user_max_clip:
            relaxed["user_max_clip"] = clip
        t_min = user_dp_min_survivors(args, per_round)
        if t_min < safe.user_min_survivors:
            relaxed["user_min_survivors"] = t_min
        if args.rounds < safe.user_min_rounds:  # the plan spends the budget in fewer rounds
            relaxed["user_min_rounds"] = args.rounds
    if args.dp_epsilon > safe.record_epsilon:
        relaxed["record_epsilon"] = args.dp_epsilon
    if args.dp_delta > safe.record_delta:
        relaxed["record_delta"] = args.dp_delta
    if user_epsilon and args.dp_delta > safe.user_delta:
        relaxed["user_delta"] = args.dp_delta
    return relaxed


def _cli() -> list[str]:
    return [sys.executable, "-m", "fedvpa_secure.cli"]


def last_error_line(log: Path) -> str:
    """The child's own error line (``fedvpa-secure X: error: ...`` or the last ERROR/Error line),
    so that a failure is reported where the user looks, not only inside ``OUT/logs``."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if ": error: " in line or " ERROR " in line or PYTHON_EXCEPTION.match(line):
            return line.strip()[:500]
    return ""


PYTHON_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")
"""The last line of a traceback (``TypeError: ...``): a crash is relayed like an error."""


def wait_address(path: Path, proc: subprocess.Popen, timeout: float, log: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            reason = last_error_line(log)
            raise FedVPAError(
                f"the server exited early with status {proc.returncode}"
                + (f": {reason}" if reason else "")
                + f" (log: {log})"
            )
        time.sleep(0.2)
    raise FedVPAError(f"the server did not start in time (log: {log})")


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.train.progress import progress_bar

    server_toml, ids, files = prepare_run(args)
    out = server_toml.parent
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CI=os.environ.get("CI", ""))
    procs: list[subprocess.Popen] = []
    addr_file = out / "server.address"
    addr_file.unlink(missing_ok=True)
    started = time.monotonic()
    server = subprocess.Popen(
        [*_cli(), "server", "--config", str(server_toml)],
        stdout=open(logs / "server.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs.append(server)
    try:
        address = wait_address(addr_file, server, 300.0, logs / "server.log")
        for cid in ids:
            procs.append(
                subprocess.Popen(
                    [
                        *_cli(),
                        "client",
                        "--server",
                        address,
                        "--client-id",
                        cid,
                        "--config",
                        str(files[cid]),
                        "--data",
                        str(files[f"data:{cid}"]),
                    ],
                    stdout=open(logs / f"{cid}.log", "w"),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        rounds_file = out / "rounds.json"
        done = 0
        with progress_bar(f"secure federation: {len(ids)} clients", args.rounds) as advance:
            while server.poll() is None:
                if time.monotonic() - started > args.timeout:
                    raise FedVPAError(f"the run did not finish within {args.timeout:.0f}s")
                if rounds_file.exists():
                    try:
                        now = len(json.loads(rounds_file.read_text())["rounds"])
                    except (ValueError, KeyError):
                        now = done
                    if now > done:
                        advance(now - done)
                        done = now
                time.sleep(0.5)
        for p in procs[1:]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if server.returncode != 0:
        reason = last_error_line(logs / "server.log")
        print(
            f"server failed (status {server.returncode})"
            + (f": {reason}" if reason else "")
            + f"; see {logs / 'server.log'}",
            file=sys.stderr,
        )
        return 1
    report = json.loads((out / "report.json").read_text())
    acc = report.get("accuracy", {}).get("overall")
    user_level = (report.get("privacy") or {}).get("user_level")
    privacy = "" if not user_level else f", user-level epsilon {user_level['epsilon']:.3g}"
    print(
        f"done in {time.monotonic() - started:.0f}s: {report['completed_rounds']} rounds, "
        f"eval accuracy {acc}{privacy}; report: {out / 'report.json'}"
    )
    if (out / "model.safetensors").is_file():
        who = "--context MY_PAIRS.jsonl" if args.method != "monolithic" else ""
        print(
            f"the trained model: RewardModel.from_pretrained({str(out)!r}), or "
            f"`fedvpa-secure score {out} {who} --input IN --out OUT`".replace("  ", " ")
        )
    return 0
