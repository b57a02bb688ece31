"""``fedvpa-secure split``: make a training and an ``--eval-data`` folder out of one HH folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split",
        help="split an HH-RLHF folder into training and evaluation folders by first Human turn",
        description="Write TRAIN and EVAL folders of DATA's layout. Every pair of one "
        "conversation opener lands on the same side, so `experiment --eval-data EVAL` scores "
        "users on prompts the federation never trained on.",
    )
    p.add_argument("data", help="HH-RLHF folder (<subset>/*.jsonl.gz)")
    p.add_argument("--train", required=True, help="output folder for the training rows")
    p.add_argument("--eval", required=True, help="output folder for the evaluation rows")
    p.add_argument("--eval-fraction", type=float, default=0.3, help="share of openers sent to EVAL")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same split")
    p.add_argument("--overwrite", action="store_true", help="write into non-empty folders")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.data import split_folder

    report = split_folder(
        args.data, args.train, args.eval, args.eval_fraction, args.seed, overwrite=args.overwrite
    )
    train, held = sum(report.train_rows.values()), sum(report.eval_rows.values())
    print(f"wrote {train} training rows to {args.train} and {held} evaluation rows to {args.eval}")
    for path in report.omitted:
        print(f"left out {path}: no row for one side", flush=True)
    return 0
