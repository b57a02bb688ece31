"""Print the empirical leakage table of PRIVACY.md section 5 (not a test; minutes of CPU).

For record-level and user-level canaries: no DP and DP at epsilon 1, 4, 8 (user level:
DP-FedAvg in the harness's aggregator, S = 0.05; record level: the learner's DP-SGD, C = 1),
each row one training run audited with the loss attack (k+ = k- = m // 4, fixed in advance)
and, where reference models are trained, offline LiRA. The no-DP rows also run the positive
and negative controls.

    .venv/bin/python benchmarks/leakage_table.py --out /tmp/leakage-table [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.leakage import LeakageSettings, empirical_audit
from fedvpa_secure.train.leakage_dp import DPSettings


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="CI-sized canary counts")
    p.add_argument("--levels", default="record,user")
    p.add_argument("--epsilons", default="none,1,4,8")
    p.add_argument("--canaries", type=int, default=None, help="override m for every level")
    p.add_argument("--no-controls", action="store_true", help="skip the controls on no-DP rows")
    p.add_argument("--reference-models", type=int, default=None, help="override LiRA references")
    args = p.parse_args()
    torch.set_num_threads(1)
    big = not args.quick
    common = {
        "record": {
            "canaries": 256 if big else 48,
            "n_clients": 16 if big else 8,
            "rounds": 10,
            "local_steps": 5,
            "reference_models": 2,
        },
        "user": {
            "canaries": 128 if big else 32,
            "n_clients": 8,
            "pairs_per_canary": 12,
            "context_size": 4,
            "rounds": 8,
            "local_steps": 10,
            "reference_models": 0,
        },
    }
    if args.canaries is not None:
        for c in common.values():
            c["canaries"] = args.canaries
    if args.reference_models is not None:
        for c in common.values():
            c["reference_models"] = args.reference_models
    rows = []
    for level in args.levels.split(","):
        for eps in args.epsilons.split(","):
            dp = None
            if eps != "none":
                clip = 1.0 if level == "record" else 0.05  # per episode / per client update
                dp = DPSettings(
                    level=level,
                    target_epsilon=float(eps),
                    clipping_norm=clip,
                    # prior noise: None = calibrated to a fixed share of the budget
                )
            started = time.perf_counter()
            try:
                settings = LeakageSettings(level=level, dp=dp, **common[level])
                report = empirical_audit(
                    settings,
                    args.out / f"{level}-{eps}",
                    controls=dp is None and not args.no_controls,
                    progress=lambda m: print(m, file=sys.stderr, flush=True),
                )
            except ConfigError as err:
                print(f"{level} eps {eps}: skipped ({err})", file=sys.stderr)
                rows.append((level, eps, str(err)))
                continue
            report["wall_seconds"] = round(time.perf_counter() - started, 1)
            rows.append((level, eps, report))
            print(json.dumps({k: report.get(k) for k in ("auc", "audited_epsilon")}), flush=True)
    print(
        "| level | DP epsilon (accountant) | m | attack | AUC +- SE | TPR@1%FPR | TPR@0.1%FPR "
        "| audited eps (95%) | LiRA AUC | CP check | controls |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for level, eps, r in rows:
        if isinstance(r, str):
            print(f"| {level} | {eps} | - | - | skipped: {r} | - | - | - | - | - | - |")
            continue
        lira = r["attacks"].get("lira", {}).get("auc")
        check = r.get("threshold_check")
        controls = "-"
        if "controls_passed" in r:
            controls = (
                f"pos AUC {r['positive_control']['auc']:.2f} / eps "
                f"{r['positive_control']['audited_epsilon']:.2f}; neg AUC "
                f"{r['negative_control']['auc']:.2f}"
            )
        print(
            f"| {level} | {_fmt(r['accountant_epsilon'], '.2f') if eps != 'none' else 'no DP'} "
            f"| {r['canaries']} | {r['attack']} | {r['auc']:.3f} +- {r['auc_se']:.3f} "
            f"| {r['tpr_at_fpr_0.01']:.3f} | {r['tpr_at_fpr_0.001']:.3f} "
            f"| {r['audited_epsilon']:.3f} | {_fmt(lira)} "
            f"| {'-' if check is None else ('ok' if check['ok'] else 'VIOLATED')} | {controls} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
