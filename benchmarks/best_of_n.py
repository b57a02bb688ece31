"""Best-of-N on this CPU: does the personalised reward model pick what each user type prefers?

Candidates come from a real small causal LM that runs offline (Gemma 3 270M, the ``align``
extra). A trained FedVPA-GP model picks the best of N per prompt for each user type, once
conditioned on the prototype its run named for the type and once on an unseen user's profile
inferred from that user's own labelled pairs; the monolithic model picks once for everybody.
Each pick is judged by that type's gold reward (:mod:`fedvpa_secure.alignment.gold`), fitted with
the true type on pairs the federation never trained on, and reported as win rates against the
monolithic pick and against a random candidate, per prompt collection (harmless-base red-team
prompts, where the p3 types disagree, and helpful prompts, where they agree), with bootstrap
intervals over prompts, per training seed.

    fedvpa-secure split ../shared/data/hh-rlhf --train runs/hh/train --eval runs/hh/eval
    fedvpa-secure experiment --data runs/hh/train --eval-data runs/hh/eval --protocol p3 \\
        --method fedvpa-gp --seed 0 --out runs/bon/fedvpa-gp-s0     # and --method monolithic
    python benchmarks/best_of_n.py --eval-data runs/hh/eval \\
        --fedvpa runs/bon/fedvpa-gp-s0 --monolithic runs/bon/monolithic-s0 --out runs/best_of_n

The evaluation folder is split once more by first Human turn: about 70% of its prompts fit the
gold rewards and give unseen users their context pairs, the rest are the best-of-N prompts, so
no selector and no gold reward has seen a best-of-N prompt. Candidates are cached in
``OUT/candidates.json`` and reused when the prompts and sampling settings match. Writes
``OUT/best_of_n.json`` and ``OUT/best_of_n.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedvpa_secure.alignment.best_of_n import (
    WinRate,
    best,
    bootstrap,
    score_grid,
    wins_against,
    wins_against_random,
)
from fedvpa_secure.alignment.generate import (
    GEMMA_270M,
    GENERATORS,
    CandidateGenerator,
    SamplingConfig,
)
from fedvpa_secure.alignment.gold import GoldReward, fit_gold
from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.config import ExperimentConfig, ModelConfig
from fedvpa_secure.data.dialogue import first_human_turn
from fedvpa_secure.data.hh_rlhf import load_folder
from fedvpa_secure.data.protocols import CHOSEN, HARMLESS, HELPFUL, Candidate, get_protocol
from fedvpa_secure.data.protocols import pair_domain as domain_of
from fedvpa_secure.data.split import eval_score, is_eval_prompt
from fedvpa_secure.data.types import join_prompt_response
from fedvpa_secure.errors import FedVPAError
from fedvpa_secure.model.backbone import Backbone
from fedvpa_secure.reward_model import ContextPair, RewardModel
from fedvpa_secure.train.features import fill_embedding_cache

PROMPT_SALT = 104729
"""Seed of the prompt hash that sets the best-of-N prompts apart from the gold/context pairs."""
COMPARISONS = (
    "prototype vs monolithic",
    "unseen user vs monolithic",
    "prototype vs random",
    "unseen user vs random",
    "monolithic vs random",
    "gold best vs random",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-data", required=True, help="the split's evaluation folder")
    ap.add_argument("--fedvpa", nargs="+", default=[], help="FedVPA-GP run folders (seeds)")
    ap.add_argument("--monolithic", nargs="+", default=[], help="monolithic runs, same order")
    ap.add_argument("--out", default="runs/best_of_n")
    ap.add_argument("--harmless-prompts", type=int, default=64)
    ap.add_argument("--helpful-prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8, help="candidates per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--generator", default=GEMMA_270M, choices=GENERATORS)
    ap.add_argument("--users", type=int, default=3, help="unseen users per type")
    ap.add_argument("--context-size", type=int, default=256, help="labelled pairs per user")
    ap.add_argument("--prompt-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0, help="prompt choice and sampling")
    ap.add_argument("--cache-dir", default=ExperimentConfig().cache_dir)
    ap.add_argument(
        "--candidates-only",
        action="store_true",
        help="stop after sampling OUT/candidates.json (e.g. on a machine with a GPU)",
    )
    args = ap.parse_args(argv)
    if not args.candidates_only and not args.fedvpa:
        ap.error("give --fedvpa and --monolithic run folders (or --candidates-only)")
    if len(args.fedvpa) != len(args.monolithic):
        ap.error("give one --monolithic run per --fedvpa run (the same seeds, in order)")
    return args


def split_pool(
    eval_dir: str, prompt_fraction: float
) -> tuple[list[Candidate], list[Candidate], list[str]]:
    """(gold and context candidates, best-of-N prompt candidates, user types) of p3."""
    protocol = get_protocol("p3")
    pool = protocol.make_candidates(load_folder(eval_dir).pairs)
    chosen = [is_eval_prompt(c.raw.prompt, prompt_fraction, PROMPT_SALT) for c in pool]
    gold = [c for c, is_prompt in zip(pool, chosen, strict=True) if not is_prompt]
    prompts = [c for c, is_prompt in zip(pool, chosen, strict=True) if is_prompt]
    return gold, prompts, list(protocol.user_types)


def choose_prompts(pool: Sequence[Candidate], counts: dict[str, int]) -> list[tuple[str, str]]:
    """Distinct single-turn prompts (the conversation's opener) per collection, in hash order."""
    out: list[tuple[str, str]] = []
    for domain, count in counts.items():
        openers = sorted(
            {first_human_turn(c.raw.prompt) for c in pool if domain_of(c.raw) == domain},
            key=lambda text: eval_score(text, PROMPT_SALT),
        )
        if len(openers) < count:
            raise FedVPAError(f"only {len(openers)} {domain} prompts available, {count} asked")
        out += [(f"\n\nHuman: {text}", domain) for text in openers[:count]]
    return out


def candidates_for(
    prompts: list[tuple[str, str]], args: argparse.Namespace, out: Path
) -> list[list[str]]:
    """Sampled candidates, reused from ``OUT/candidates.json`` when prompts and settings match."""
    sampling = SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed)
    key = {"generator": args.generator, "sampling": asdict(sampling), "prompts": prompts}
    path = out / "candidates.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if {k: cached.get(k) for k in key} == json.loads(json.dumps(key)):
            print(f"reusing the candidates in {path}", file=sys.stderr)
            return cached["candidates"]
    generator = CandidateGenerator(args.generator)
    candidates = generator.sample([p for p, _ in prompts], sampling)
    write_json_atomic(path, {**key, "candidates": candidates})
    return candidates


def context_of(pool: Sequence[Candidate], user_type: str, size: int, seed: int) -> list:
    """One unseen user's labelled pairs: ``size`` pairs of the gold half, labelled as its type."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
    pairs = []
    for i in picked:
        raw, prefers_chosen = pool[i].raw, pool[i].labels[user_type] == CHOSEN
        better, worse = (raw.chosen, raw.rejected) if prefers_chosen else (raw.rejected, raw.chosen)
        pairs.append(ContextPair(raw.prompt, better, worse))
    return pairs


def embed_everything(
    gold_pool: Sequence[Candidate],
    prompts: list[tuple[str, str]],
    candidates: list[list[str]],
    cache_dir: str,
):
    """Fill the embedding cache with every text the gold rewards and the selectors will read."""
    texts = [
        join_prompt_response(c.raw.prompt, r)
        for c in gold_pool
        for r in (c.raw.chosen, c.raw.rejected)
    ]
    texts += [
        join_prompt_response(p, r)
        for (p, _), group in zip(prompts, candidates, strict=True)
        for r in group
    ]
    cfg = ModelConfig()
    backbone = Backbone(cfg.backbone, cfg.max_length)
    cache, _ = fill_embedding_cache(backbone, texts, cache_dir, cfg.backbone)
    return cache.get


def gold_grids(
    gold: GoldReward, embed, prompts: list[tuple[str, str]], candidates: list[list[str]]
) -> dict[str, np.ndarray]:
    """Each type's gold reward of every candidate, shape (prompts, N)."""
    n = len(candidates[0])
    texts = [
        join_prompt_response(p, r)
        for (p, _), group in zip(prompts, candidates, strict=True)
        for r in group
    ]
    domains = [d for _, d in prompts for _ in range(n)]
    emb = embed(texts)
    return {t: gold.score(emb, domains, t).reshape(len(prompts), n) for t in gold.user_types}


def seed_picks(
    fed_dir: str,
    mono_dir: str,
    args: argparse.Namespace,
    prompts: list[tuple[str, str]],
    candidates: list[list[str]],
    gold_pool: Sequence[Candidate],
    user_types: Sequence[str],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Per type: the monolithic, prototype and unseen users' picks; and how often a user's
    profile named its own type."""
    fed = RewardModel.from_pretrained(fed_dir, embedding_cache=args.cache_dir)
    mono = RewardModel.from_pretrained(mono_dir, embedding_cache=args.cache_dir)
    texts = [p for p, _ in prompts]
    mono_pick = best(score_grid(mono.score, texts, candidates))
    named = fed.report["switching_accuracy"]["type_prototypes"]
    picks: dict[str, dict[str, np.ndarray]] = {}
    type_right: dict[str, float] = {}
    for t_index, user_type in enumerate(user_types):
        proto = int(named[user_type])
        by_proto = best(score_grid(fed.score, texts, candidates, prototype=proto))
        users, right = [], 0
        for u in range(args.users):
            context = context_of(gold_pool, user_type, args.context_size, 1000 * t_index + u)
            profile = fed.personalize(context)
            probs = profile.type_probabilities or {}
            right += int(bool(probs) and max(probs, key=probs.get) == user_type)
            users.append(best(score_grid(fed.score, texts, candidates, profile=profile)))
        picks[user_type] = {
            "monolithic": mono_pick,
            "prototype": by_proto,
            "users": np.stack(users),
        }
        type_right[user_type] = right / args.users
    return picks, type_right


def win_rows(
    gold: np.ndarray, picks: dict[str, np.ndarray], mask: np.ndarray
) -> dict[str, WinRate]:
    """The six comparisons on the prompts ``mask`` selects."""
    g, mono, proto, users = (
        gold[mask],
        picks["monolithic"][mask],
        picks["prototype"][mask],
        picks["users"][:, mask],
    )
    user_vs_mono = np.mean([wins_against(g, u, mono) for u in users], axis=0)
    user_vs_random = np.mean([wins_against_random(g, u) for u in users], axis=0)
    values = {
        "prototype vs monolithic": wins_against(g, proto, mono),
        "unseen user vs monolithic": user_vs_mono,
        "prototype vs random": wins_against_random(g, proto),
        "unseen user vs random": user_vs_random,
        "monolithic vs random": wins_against_random(g, mono),
        "gold best vs random": wins_against_random(g, best(g)),
    }
    return {name: bootstrap(v) for name, v in values.items()}


def plot(results: dict, path: Path) -> None:
    """Win rates with intervals: one panel per (collection, type), one bar group per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, t) for d in (HARMLESS, HELPFUL) for t in results["user_types"]]
    fig, axes = plt.subplots(2, len(results["user_types"]), figsize=(12, 7), sharey=True)
    seeds = results["seeds"]
    width = 0.8 / len(seeds)
    for ax, (domain, user_type) in zip(axes.flat, panels, strict=True):
        for s, seed in enumerate(seeds):
            rows = seed["win_rates"][user_type][domain]
            means = [rows[c]["mean"] for c in COMPARISONS]
            err = [
                [rows[c]["mean"] - rows[c]["low"] for c in COMPARISONS],
                [rows[c]["high"] - rows[c]["mean"] for c in COMPARISONS],
            ]
            x = np.arange(len(COMPARISONS)) + s * width
            ax.bar(x, means, width, yerr=err, capsize=2, label=f"seed {seed['seed']}")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{user_type} on {domain} prompts")
        ax.set_xticks(np.arange(len(COMPARISONS)) + 0.4 - width / 2)
        ax.set_xticklabels(COMPARISONS, rotation=30, ha="right", fontsize=8)
    axes.flat[0].set_ylabel("gold win rate")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"best-of-{results['n']} judged by per-type gold rewards (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    """Markdown: one row per seed, type, collection; one column per comparison."""
    print(f"| seed | type | prompts | {' | '.join(COMPARISONS)} |")
    print("| --- " * (3 + len(COMPARISONS)) + "|")
    for seed in results["seeds"]:
        for user_type, by_domain in seed["win_rates"].items():
            for domain, rows in by_domain.items():
                cells = [
                    f"{rows[c]['mean']:.3f} [{rows[c]['low']:.2f}, {rows[c]['high']:.2f}]"
                    for c in COMPARISONS
                ]
                where = f"{domain} ({rows[COMPARISONS[0]]['prompts']})"
                print(f"| {seed['seed']} | {user_type} | {where} | {' | '.join(cells)} |")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gold_pool, prompt_pool, user_types = split_pool(args.eval_data, args.prompt_fraction)
    prompts = choose_prompts(
        prompt_pool, {HARMLESS: args.harmless_prompts, HELPFUL: args.helpful_prompts}
    )
    candidates = candidates_for(prompts, args, out)
    if args.candidates_only:
        print(f"wrote {out / 'candidates.json'}")
        return 0
    embed = embed_everything(gold_pool, prompts, candidates, args.cache_dir)
    gold = fit_gold(gold_pool, user_types, embed)
    grids = gold_grids(gold, embed, prompts, candidates)
    domains = np.array([d for _, d in prompts])
    masks = {HARMLESS: domains == HARMLESS, HELPFUL: domains == HELPFUL}
    seeds = []
    for fed_dir, mono_dir in zip(args.fedvpa, args.monolithic, strict=True):
        picks, type_right = seed_picks(
            fed_dir, mono_dir, args, prompts, candidates, gold_pool, user_types
        )
        rates = {
            t: {
                d: {c: w.to_dict() for c, w in win_rows(grids[t], picks[t], m).items()}
                for d, m in masks.items()
            }
            for t in user_types
        }
        seed = json.loads(Path(fed_dir, "report.json").read_text())["config"]["train"]["seed"]
        seeds.append(
            {
                "seed": seed,
                "fedvpa": fed_dir,
                "monolithic": mono_dir,
                "profile_names_own_type": type_right,
                "win_rates": rates,
            }
        )
    results = {
        "n": args.n,
        "generator": args.generator,
        "prompts": {d: int(m.sum()) for d, m in masks.items()},
        "user_types": user_types,
        "gold_held_out_accuracy": gold.held_out,
        "gold_pairs": len(gold_pool),
        "users_per_type": args.users,
        "context_size": args.context_size,
        "seeds": seeds,
        "command": " ".join(
            ["python benchmarks/best_of_n.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    write_json_atomic(out / "best_of_n.json", results)
    plot(results, out / "best_of_n.png")
    print_table(results)
    print(f"gold held-out accuracy: {json.dumps(gold.held_out)}")
    print(f"wrote {out / 'best_of_n.json'} and {out / 'best_of_n.png'}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except FedVPAError as err:
        raise SystemExit(f"error: {err}") from None
