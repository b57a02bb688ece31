"""Accuracy table of every method on the data protocols, several seeds, mean and spread.

Runs the real learner in-process (frozen backbone; embeddings come from the on-disk cache, so
only the first run pays for embedding) and prints, per protocol and method, the metrics of
METHOD.md section 7: overall, conflicting, per type, switching, silhouette, KL per dimension.

    python benchmarks/learner_table.py --data ../shared/data/hh-rlhf --protocols p3 \
        --seeds 0 1 2 --json table.json

With --data DIR, a held-out folder of the same layout is made once (split by the first Human
turn, so evaluation users' prompts are unseen) and used as --eval-data.

``--dp-epsilons 1 4 8 none`` adds record-level DP-SGD rows (the privacy-utility table of issue
4): every other setting stays as in the no-DP row, so a row differs from ``none`` by DP only.

Sizes and settings not given here are the experiment command's defaults for the protocol
(config.PROTOCOL_DEFAULTS: on p1, p2 and p3 the domain-gated linear head, the likelihood
posterior for methods with prototypes, 128 context pairs in training, FedAdam at 0.03; p3 with
20 clients x 256 pairs and 8 unseen users x 320 personalised from 256 context pairs).

``--reuse`` takes a run's report.json from --out instead of running it again when the report
was written with the same configuration from the same --data: an interrupted table resumes
where it stopped, and a run with other settings is run again (its folder overwritten).

``--train``, ``--objective`` and ``--model`` set any other field of those configs for every row
(``--train server_learning_rate=0.003 --model head=mlp domain_gate=false``); an override of
``posterior`` applies to every method, so it fails for methods without prototypes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from fedvpa_secure.config import METHODS
from fedvpa_secure.data import split_folder
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.data_setup import load_federated_data
from fedvpa_secure.train.experiment import run_experiment

METRICS = (
    ("overall", lambda r: r["accuracy"]["overall"]),
    ("conflicting", lambda r: r["accuracy"]["conflicting"]),
    ("switching", lambda r: _mean(r["switching_accuracy"]["per_type"].values())),
    ("silhouette", lambda r: r["latent"]["silhouette"]),
    ("kl/dim", lambda r: r["latent"]["kl_per_dim"]),
)


def _present(values) -> list[float]:
    """Values that exist: None (metric not defined) and NaN (e.g. no conflicting pairs) dropped."""
    return [v for v in values if v is not None and not math.isnan(v)]


def _mean(values) -> float | None:
    vals = _present(values)
    return sum(vals) / len(vals) if vals else None


def _cell(values: list[float | None]) -> str:
    vals = _present(values)
    if not vals:
        return "-"
    spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f}±{spread:.3f}"


def _fields(items: list[str], group: str) -> dict[str, object]:
    """``FIELD=VALUE`` pairs; rounds and seeds stay with their own flags (the DP prior share is
    calibrated to the rounds when the config is built)."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--{group} {item!r}: expected FIELD=VALUE")
        if name in ("rounds", "seed"):
            flag = "--rounds" if name == "rounds" else "--seeds"
            raise SystemExit(f"--{group} {name}: set it with {flag}")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def _given(flag: str, value: int | None) -> list[str]:
    """[flag, value] when the value was given, else nothing (the protocol default applies)."""
    return [] if value is None else [flag, str(value)]


def _override(cfg, overrides: dict[str, dict[str, object]]):
    """``cfg`` with the overridden fields (each config validates itself again)."""
    try:
        parts = {g: replace(getattr(cfg, g), **v) for g, v in overrides.items() if v}
        return replace(cfg, **parts) if parts else cfg
    except (TypeError, ConfigError) as err:  # an unknown field name, a value out of range
        raise SystemExit(f"bad override: {err}") from None


def _finished_report(out: Path, cfg) -> dict | None:
    """The report already in ``out`` when it was written by this very configuration."""
    path = out / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if _comparable(report.get("config")) == _comparable(cfg.to_dict()) else None


def _comparable(config: dict | None) -> dict | None:
    """A config as JSON reads it back (tuples become lists), without the split's folders: each
    invocation splits --data into a new temporary folder, the same pairs every time."""
    if config is None:
        return None
    config = json.loads(json.dumps(config))
    for key in ("data_dir", "eval_data_dir"):
        config.get("data", {}).pop(key, None)
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="HH-RLHF folder (default: synthetic only)")
    parser.add_argument("--protocols", nargs="+", default=["synthetic"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    # None: the experiment command's default for the protocol (config.PROTOCOL_DEFAULTS)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--pairs-per-client", type=int, default=None)
    parser.add_argument("--eval-clients", type=int, default=None)
    parser.add_argument("--eval-pairs-per-client", type=int, default=None)
    parser.add_argument("--context-size", type=int, default=None)
    parser.add_argument(
        "--eval-context-size",
        type=int,
        default=None,
        help="unseen users' K_ctx (0: --context-size)",
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", default="runs/learner_table")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take finished runs with the same configuration from --out instead of rerunning",
    )
    parser.add_argument(
        "--dp-epsilons",
        nargs="+",
        default=["none"],
        help="record-level DP-SGD target epsilons per client ('none': no DP)",
    )
    for group in ("train", "objective", "model"):
        parser.add_argument(
            f"--{group}",
            nargs="+",
            default=[],
            metavar="FIELD=VALUE",
            help=f"override a field of the {group} config for every row (VALUE read as JSON, "
            "else as a string)",
        )
    args = parser.parse_args()
    overrides = {g: _fields(getattr(args, g), g) for g in ("train", "objective", "model")}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from fedvpa_secure.commands import experiment as experiment_cmd
    from fedvpa_secure.commands.experiment import config_from_args

    cli = argparse.ArgumentParser()
    experiment_cmd.register(cli.add_subparsers())

    train_dir = eval_dir = None
    if args.data:
        tmp = Path(tempfile.mkdtemp(prefix="fedvpa-split-"))
        train_dir, eval_dir = tmp / "train", tmp / "eval"
        split_folder(args.data, train_dir, eval_dir, 0.3, 0)
    rows: dict[str, dict[str, list[dict]]] = {}
    for protocol in args.protocols:
        hh = protocol != "synthetic"
        for method, epsilon in ((m, e) for m in args.methods for e in args.dp_epsilons):
            row = method if epsilon == "none" else f"{method} eps={epsilon}"
            for seed in args.seeds:
                ns = cli.parse_args(
                    [
                        "experiment",
                        "--out",
                        "unused",
                        "--method",
                        method,
                        "--rounds",
                        str(args.rounds),
                        *_given("--context-size", args.context_size),
                        *_given("--eval-context-size", args.eval_context_size),
                        "--seed",
                        str(seed),
                        *([] if epsilon == "none" else ["--dp-epsilon", epsilon]),
                    ]
                )
                sizes = {
                    "n_clients": args.clients,
                    "n_eval_clients": args.eval_clients,
                    "pairs_per_client": args.pairs_per_client if hh else 64,
                    "eval_pairs_per_client": args.eval_pairs_per_client if hh else 64,
                }
                kwargs = {
                    "eval_data_dir": str(eval_dir) if hh else None,
                    **{k: v for k, v in sizes.items() if v is not None},
                    "type_mix": (0.5, 0.5),
                    "max_pairs_per_subset": None,
                }
                data, data_cfg = load_federated_data(
                    str(train_dir) if hh else "synthetic", protocol, kwargs, seed
                )
                cfg = _override(config_from_args(ns, data_cfg), overrides)
                out = Path(args.out) / protocol / f"{row.replace(' ', '-')}-s{seed}"
                report = _finished_report(out, cfg) if args.reuse else None
                if report is None:
                    report = run_experiment(cfg, data, out)
                rows.setdefault(protocol, {}).setdefault(row, []).append(report)
                print(
                    f"{protocol} {row} seed {seed}: overall "
                    f"{report['accuracy']['overall']:.3f} conflicting "
                    f"{report['accuracy']['conflicting']:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
    table = {}
    for protocol, methods in rows.items():
        types = methods[next(iter(methods))][0]["user_types"]
        header = ["method", *[m for m, _ in METRICS], *[f"type:{t}" for t in types]]
        print(f"\n{protocol} (mean±sd over seeds {args.seeds})")
        print(" | ".join(header))
        for method, reports in methods.items():
            cells = [_cell([f(r) for r in reports]) for _, f in METRICS]
            cells += [_cell([r["accuracy"]["per_type"][t] for r in reports]) for t in types]
            print(" | ".join([method, *cells]))
            table.setdefault(protocol, {})[method] = dict(zip(header[1:], cells, strict=True))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
