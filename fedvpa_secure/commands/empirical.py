"""``audit --empirical``: the canary audit of PRIVACY.md section 5 from the command line.

Kept apart from the ledger audit so that ``fedvpa-secure audit PATH`` imports neither torch nor
the learner. Flags map one to one onto :class:`fedvpa_secure.train.leakage.LeakageSettings`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fedvpa_secure.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The empirical audit's flags, in their own group of the ``audit`` parser."""
    g = parser.add_argument_group(
        "empirical audit (--empirical)",
        "train with canaries, attack the global model, one-run audit with controls; writes "
        "OUT/audit.json and OUT/roc.png (--out is required)",
    )
    g.add_argument("--empirical", action="store_true", help="run the empirical canary audit")
    g.add_argument("--canaries", type=int, default=64, metavar="M", help="canaries (default 64)")
    g.add_argument("--level", choices=("record", "user"), default="record")
    g.add_argument(
        "--dp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train the audited run with DP at --level (user: DP-FedAvg; default --no-dp)",
    )
    g.add_argument("--epsilon", type=float, default=4.0, help="DP target epsilon (default 4)")
    g.add_argument("--noise-multiplier", type=float, default=None, help="DP z instead of --epsilon")
    g.add_argument("--clip", type=float, default=0.05, help="DP clipping norm S (default 0.05)")
    g.add_argument("--delta", type=float, default=1e-5)
    g.add_argument(
        "--max-noise-step",
        type=_noise_cap,
        default="default",
        metavar="STD|none",
        help="record level: cap on the per-step DP noise std lr*z*C/B that sets the DP learning "
        "rate (default: the learner's; 'none' trains at the plain learning rate)",
    )
    g.add_argument("--confidence", type=float, default=0.95)
    g.add_argument("--k-plus", type=int, default=None, help="'in' guesses (default M // 4)")
    g.add_argument("--k-minus", type=int, default=None, help="'out' guesses (default M // 4)")
    g.add_argument("--reference-models", type=int, default=2, help="offline LiRA references")
    g.add_argument("--attack", choices=("loss", "lira"), default="loss", help="attack audited")
    g.add_argument("--clients", type=int, default=8)
    g.add_argument("--pairs-per-client", type=int, default=32)
    g.add_argument("--rounds", type=int, default=8)
    g.add_argument("--local-steps", type=int, default=5)
    g.add_argument("--method", default="fedvpa-gp")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-controls", action="store_true", help="skip the positive/negative controls")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    g.add_argument("--cache-dir", default=".cache/embeddings")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    g.add_argument(
        "--mutant",
        choices=("zero-noise", "no-clipping"),
        default=None,
        help=argparse.SUPPRESS,  # test-only broken-DP knob; the audit must catch it
    )


def _noise_cap(text: str) -> float | str | None:
    """``none`` (no cap), ``default`` (the learner's) or a positive number."""
    if text in ("none", "default"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError as err:
        msg = f"expected a number, 'none' or 'default': {text!r}"
        raise argparse.ArgumentTypeError(msg) from err


def settings_from_args(args: argparse.Namespace) -> Any:
    """Validated :class:`LeakageSettings` from the flags."""
    from fedvpa_secure.train.leakage import LeakageSettings
    from fedvpa_secure.train.leakage_dp import DPSettings

    if args.path is not None:
        raise ConfigError("--empirical takes no PATH (it trains its own run); use --out DIR")
    if args.out is None:
        raise ConfigError("--empirical needs --out DIR for audit.json and roc.png")
    dp = None
    if args.dp:
        cap = {} if args.max_noise_step == "default" else {"max_noise_step": args.max_noise_step}
        dp = DPSettings(
            **cap,
            level=args.level,
            clipping_norm=args.clip,
            noise_multiplier=args.noise_multiplier,
            target_epsilon=None if args.noise_multiplier is not None else args.epsilon,
            delta=args.delta,
            mutant=args.mutant,
        )
    elif args.mutant is not None:
        raise ConfigError("--mutant needs --dp")
    return LeakageSettings(
        level=args.level,
        canaries=args.canaries,
        k_plus=args.k_plus,
        k_minus=args.k_minus,
        confidence=args.confidence,
        delta=args.delta,
        reference_models=args.reference_models,
        audit_attack=args.attack,
        seed=args.seed,
        method=args.method,
        n_clients=args.clients,
        pairs_per_client=args.pairs_per_client,
        rounds=args.rounds,
        local_steps=args.local_steps,
        device=args.device,
        cache_dir=args.cache_dir,
        dp=dp,
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def run_empirical(args: argparse.Namespace) -> int:
    """Run the audit; 0 when the controls pass and a DP run is consistent, else 1."""
    import torch

    from fedvpa_secure.train.leakage import AUDIT_JSON, empirical_audit

    settings = settings_from_args(args)
    torch.set_num_threads(max(1, args.threads))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report = empirical_audit(settings, args.out, controls=not args.no_controls, progress=say)
    rows = [("audited", report)]
    rows += [(k, report[k]) for k in ("positive_control", "negative_control") if k in report]
    for name, r in rows:
        print(
            f"{name:17s} AUC {_fmt(r['auc'])} +- {_fmt(r['auc_se'])}  "
            f"TPR@1%FPR {_fmt(r['tpr_at_fpr_0.01'])}  audited eps {_fmt(r['audited_epsilon'])}  "
            f"accountant eps {_fmt(r['accountant_epsilon'])}"
            + (f"  {'passed' if r['passed'] else 'FAILED'}" if "passed" in r else "")
        )
    print(f"wrote {args.out / AUDIT_JSON}")
    failures = []
    if report.get("controls_passed") is False:
        failures.append("a control failed: the harness cannot be trusted on this run")
    if report.get("dp_consistent") is False:
        failures.append(
            "the DP run leaks more than its accountant allows: "
            + json.dumps(report.get("threshold_check", {}))
        )
    for f in failures:
        print(f"EMPIRICAL AUDIT FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0
