"""``fedvpa-secure dpo``: align a policy by DPO on a preference set ``label`` wrote.

Needs the ``align`` extra (TRL). ``--policy tiny-causal`` runs anywhere in seconds;
``--policy gemma-3-270m --device cuda`` is the real run on a machine with a GPU.
"""

from __future__ import annotations

import argparse

from fedvpa_secure.alignment.generate import GENERATORS


def register(sub: argparse._SubParsersAction) -> None:
    from fedvpa_secure.alignment.dpo import DPOSettings

    defaults = DPOSettings()
    p = sub.add_parser(
        "dpo",
        help="align a policy by DPO on label's output (the align extra: TRL)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--pairs", required=True, help="JSON lines {prompt, chosen, rejected}")
    p.add_argument("--out", required=True, help="folder for the policy and dpo_report.json")
    p.add_argument(
        "--policy", choices=GENERATORS, default=defaults.policy, help="the causal LM to align"
    )
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per step")
    p.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="AdamW step size"
    )
    p.add_argument(
        "--beta", type=float, default=defaults.beta, help="DPO's KL strength to the reference"
    )
    p.add_argument(
        "--max-length", type=int, default=defaults.max_length, help="tokens per prompt+answer"
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=defaults.device,
        help="auto takes cuda when present",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="data order (the tiny policy's init is fixed)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.alignment.dpo import DPOSettings, train_dpo

    settings = DPOSettings(
        policy=args.policy,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        beta=args.beta,
        max_length=args.max_length,
        device=args.device,
        seed=args.seed,
    )
    report = train_dpo(args.pairs, args.out, settings)
    last = report["history"][-1] if report["history"] else {}
    print(
        f"DPO: {settings.steps} steps on {report['pairs']} pairs; last loss "
        f"{last.get('loss', float('nan')):.4f}; policy saved in {args.out}/policy"
    )
    return 0
