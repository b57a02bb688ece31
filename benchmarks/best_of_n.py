"""Best-of-N on this CPU: does the personalised reward model pick what each user type prefers?

Candidates come from a real small causal LM that runs offline (Gemma 3 270M, the ``align``
extra). A trained FedVPA-GP model picks the best of N per prompt for each user type, once
conditioned on the prototype its run named for the type and once on an unseen user's profile
inferred from that user's own labelled pairs; the monolithic model picks once for everybody.
Each pick is judged by that type's gold reward (:mod:`fedvpa_secure.alignment.gold`), fitted with
the true type, and reported as win rates against the monolithic pick and against a random
candidate, per prompt collection (harmless-base red-team prompts, where the p3 types disagree,
and helpful prompts, where they agree), with bootstrap intervals over prompts, per training seed.

    fedvpa-secure split ../shared/data/hh-rlhf --train runs/hh/train --eval runs/hh/eval
    fedvpa-secure experiment --data runs/hh/train --eval-data runs/hh/eval --protocol p3 \\
        --method fedvpa-gp --seed 0 --out runs/bon/fedvpa-gp-s0     # and --method monolithic
    python benchmarks/best_of_n.py --eval-data runs/hh/eval \\
        --fedvpa runs/bon/fedvpa-gp-s0 --monolithic runs/bon/monolithic-s0 --out runs/best_of_n

The evaluation folder (prompts the federation never trained on) is split three ways by first
Human turn: best-of-N prompts, gold-reward pairs, and unseen users' context pairs, so the judge,
the users and the prompts share no conversation opener. The one overlap left: the experiment
named its prototypes (which prototype is which type) from its own evaluation users, whose pairs
come from the same folder. Candidates are cached in ``OUT/candidates.json`` and reused when the
prompts and sampling settings match. Writes ``OUT/best_of_n.json`` and ``OUT/best_of_n.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa_secure.alignment.best_of_n import (
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
from fedvpa_secure.alignment.gold import Embed, GoldReward, fit_gold
from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.commands.argtypes import non_negative_int, positive_int, probability
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
"""Seed of the opener hash that sets the best-of-N prompts apart from everything else."""
CONTEXT_SALT = 130363
"""Seed of the opener hash that splits the rest into gold-reward pairs and users' contexts."""
CONTEXT_SHARE = 0.3
"""Of the rest, the users' contexts' share: ~540 p3 pairs of runs/hh/eval, enough for 256-pair
users; the gold reward gets the other 70% (it is the data-hungry part)."""
COMPARISONS = (
    "prototype vs monolithic",
    "unseen user vs monolithic",
    "prototype vs random",
    "unseen user vs random",
    "monolithic vs random",
    "gold best vs random",
)
NOTES = (
    "Intervals are percentile bootstraps over prompts; they hold the gold reward and the unseen "
    "users fixed (each prompt's unseen-user win is the mean over the users).",
    "The gold's held-out accuracy is measured on HH-RLHF's human-written answers, not on the "
    "generated candidates it judges.",
    "In p3 helpful-first reverses harmless-base labels, so on harmless prompts the two types' "
    "gold rewards are exact negatives: one pick's two 'vs random' rates there sum to 1.",
    "The gold shares the frozen backbone's features with the selectors (see alignment/gold.py).",
)


@dataclass(frozen=True)
class Pool:
    """The evaluation folder's p3 pairs, split three ways by conversation opener."""

    prompts: list[Candidate]
    gold: list[Candidate]
    context: list[Candidate]
    user_types: list[str]


@dataclass(frozen=True)
class Selectors:
    """One training seed's FedVPA-GP and monolithic models, checked to be comparable."""

    seed: int
    fedvpa: RewardModel
    monolithic: RewardModel
    type_prototypes: dict[str, int]  # empty when the run named no distinct prototype per type


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-data", required=True, help="the split's evaluation folder")
    ap.add_argument("--fedvpa", nargs="+", default=[], help="FedVPA-GP run folders (seeds)")
    ap.add_argument("--monolithic", nargs="+", default=[], help="monolithic runs, same seeds")
    ap.add_argument("--out", default="runs/best_of_n")
    ap.add_argument("--harmless-prompts", type=non_negative_int, default=64)
    ap.add_argument("--helpful-prompts", type=non_negative_int, default=32)
    ap.add_argument("--n", type=positive_int, default=8, help="candidates per prompt (>= 2)")
    ap.add_argument("--max-new-tokens", type=positive_int, default=48)
    ap.add_argument("--generator", default=GEMMA_270M, choices=GENERATORS)
    ap.add_argument("--users", type=positive_int, default=3, help="unseen users per type")
    ap.add_argument("--context-size", type=positive_int, default=256, help="pairs per user")
    ap.add_argument("--prompt-fraction", type=probability, default=0.3)
    ap.add_argument("--seed", type=int, default=0, help="candidate sampling")
    ap.add_argument("--cache-dir", default=ExperimentConfig().cache_dir)
    ap.add_argument(
        "--candidates-only",
        action="store_true",
        help="stop after sampling OUT/candidates.json (e.g. on a machine with a GPU)",
    )
    args = ap.parse_args(argv)
    if args.n < 2:
        ap.error("argument --n: best-of-N needs at least 2 candidates")
    if args.harmless_prompts + args.helpful_prompts == 0:
        ap.error("ask for at least one --harmless-prompts or --helpful-prompts")
    if not args.candidates_only and not args.fedvpa:
        ap.error("give --fedvpa and --monolithic run folders (or --candidates-only)")
    if len(args.fedvpa) != len(args.monolithic):
        ap.error("give one --monolithic run per --fedvpa run (the same seeds, in order)")
    return args


def split_pool(eval_dir: str, prompt_fraction: float) -> Pool:
    """p3 candidates of the evaluation folder: best-of-N prompts, then context and gold pairs."""
    protocol = get_protocol("p3")
    pool = protocol.make_candidates(load_folder(eval_dir).pairs)
    prompts, gold, context = [], [], []
    for c in pool:
        if is_eval_prompt(c.raw.prompt, prompt_fraction, PROMPT_SALT):
            prompts.append(c)
        elif is_eval_prompt(c.raw.prompt, CONTEXT_SHARE, CONTEXT_SALT):
            context.append(c)
        else:
            gold.append(c)
    return Pool(prompts, gold, context, list(protocol.user_types))


def choose_prompts(pool: Sequence[Candidate], counts: dict[str, int]) -> list[tuple[str, str]]:
    """Distinct single-turn prompts (the conversation's opener) per collection, in hash order,
    in HH's prompt layout ("Human: ...")."""
    out: list[tuple[str, str]] = []
    for domain, count in counts.items():
        openers = sorted(
            {first_human_turn(c.raw.prompt) for c in pool if domain_of(c.raw) == domain},
            key=lambda text: eval_score(text, PROMPT_SALT),
        )
        if len(openers) < count:
            raise FedVPAError(
                f"only {len(openers)} {domain} prompts in the best-of-N share of the folder, "
                f"{count} asked; ask for fewer or raise --prompt-fraction"
            )
        out += [(f"Human: {text}", domain) for text in openers[:count]]
    return out


def candidates_for(
    prompts: list[tuple[str, str]], args: argparse.Namespace, out: Path
) -> list[list[str]]:
    """Sampled candidates, reused from ``OUT/candidates.json`` when prompts and settings match."""
    sampling = SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed)
    key = json.loads(
        json.dumps({"generator": args.generator, "sampling": asdict(sampling), "prompts": prompts})
    )
    path = out / "candidates.json"
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        print(f"{path} is not valid JSON; sampling again", file=sys.stderr)
        cached = {}
    if cached and {k: cached.get(k) for k in key} == key:
        print(f"reusing the candidates in {path}", file=sys.stderr)
        return cached["candidates"]
    candidates = CandidateGenerator(args.generator).sample([p for p, _ in prompts], sampling)
    write_json_atomic(path, {**key, "candidates": candidates})
    return candidates


def load_selectors(fed_dir: str, mono_dir: str, cache_dir: str) -> Selectors:
    """Both runs of one seed, refused with a clear error unless they can be compared."""
    fed = RewardModel.from_pretrained(fed_dir, embedding_cache=cache_dir)
    mono = RewardModel.from_pretrained(mono_dir, embedding_cache=cache_dir)
    for model, folder in ((fed, fed_dir), (mono, mono_dir)):
        if model.report.get("protocol") != "p3":
            raise FedVPAError(f"{folder} was trained on {model.report.get('protocol')}, not p3")
    if mono.model.spec.latent or not fed.model.spec.latent:
        raise FedVPAError(
            f"--fedvpa {fed_dir} ({fed.config.method}) must be personalised and --monolithic "
            f"{mono_dir} ({mono.config.method}) must not be; were they swapped?"
        )
    if fed.config.train.seed != mono.config.train.seed:
        raise FedVPAError(f"{fed_dir} and {mono_dir} were trained with different seeds")
    if fed.config.model.backbone != mono.config.model.backbone:
        raise FedVPAError(f"{fed_dir} and {mono_dir} use different backbones")
    named = (fed.report.get("switching_accuracy") or {}).get("type_prototypes") or {}
    if set(named) != set(fed.user_types) or len(set(named.values())) < len(named):
        print(
            f"{fed_dir} named no distinct prototype per type ({named}): its latent did not "
            "separate the types; only unseen users' profiles pick for this seed",
            file=sys.stderr,
        )
        named = {}
    return Selectors(fed.config.train.seed, fed, mono, {t: int(k) for t, k in named.items()})


def common_backbone(selectors: Sequence[Selectors]) -> ModelConfig:
    """The backbone every run embeds with; the gold reward must read the same features."""
    configs = {
        (s.fedvpa.config.model.backbone, s.fedvpa.config.model.max_length) for s in selectors
    }
    if len(configs) != 1:
        raise FedVPAError(f"the runs use different backbones or max lengths: {sorted(configs)}")
    return selectors[0].fedvpa.config.model


def cached_embedder(model: ModelConfig, cache_dir: str) -> Callable[[Sequence[str]], Embed]:
    """Load the runs' backbone once; each call embeds what the shared cache lacks of ``texts``
    and returns the cache's lookup."""
    backbone = Backbone(model.backbone, model.max_length)

    def fill(texts: Sequence[str]) -> Embed:
        cache, _ = fill_embedding_cache(backbone, texts, cache_dir, model.backbone)
        return cache.get

    return fill


def pair_texts(candidates: Sequence[Candidate]) -> list[str]:
    return [
        join_prompt_response(c.raw.prompt, r)
        for c in candidates
        for r in (c.raw.chosen, c.raw.rejected)
    ]


def response_texts(prompts: list[tuple[str, str]], candidates: list[list[str]]) -> list[str]:
    """Prompt + candidate texts, prompt-major: row i * N + j is prompt i's candidate j."""
    return [
        join_prompt_response(p, r)
        for (p, _), group in zip(prompts, candidates, strict=True)
        for r in group
    ]


def gold_grids(
    gold: GoldReward, embed: Embed, prompts: list[tuple[str, str]], candidates: list[list[str]]
) -> dict[str, np.ndarray]:
    """Each type's gold reward of every candidate, shape (prompts, N)."""
    n = len(candidates[0])
    domains = [d for _, d in prompts for _ in range(n)]
    emb = embed(response_texts(prompts, candidates))
    return {t: gold.score(emb, domains, t).reshape(len(prompts), n) for t in gold.user_types}


def context_of(
    pool: Sequence[Candidate], user_type: str, size: int, seed: int
) -> list[ContextPair]:
    """One unseen user's labelled pairs: ``size`` pairs of the context share, as its type labels."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
    pairs = []
    for i in picked:
        raw, prefers_chosen = pool[i].raw, pool[i].labels[user_type] == CHOSEN
        better, worse = (raw.chosen, raw.rejected) if prefers_chosen else (raw.rejected, raw.chosen)
        pairs.append(ContextPair(raw.prompt, better, worse))
    return pairs


def seed_picks(
    sel: Selectors, pool: Pool, args: argparse.Namespace, prompts: list[tuple[str, str]],
    candidates: list[list[str]],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float | None]]:  # fmt: skip
    """Per type: the monolithic, prototype and unseen users' picks; and the share of unseen
    users whose profile named their own type (None where the run named no types)."""
    texts = [p for p, _ in prompts]
    mono_pick = best(score_grid(sel.monolithic.score, texts, candidates))
    picks: dict[str, dict[str, np.ndarray]] = {}
    named_right: dict[str, float | None] = {}
    for t_index, user_type in enumerate(pool.user_types):
        proto = sel.type_prototypes.get(user_type)
        users, right = [], []
        for u in range(args.users):
            context = context_of(pool.context, user_type, args.context_size, 1000 * t_index + u)
            profile = sel.fedvpa.personalize(context)
            if profile.type_probabilities:
                probs = profile.type_probabilities
                right.append(max(probs, key=probs.get) == user_type)
            users.append(best(score_grid(sel.fedvpa.score, texts, candidates, profile=profile)))
        picks[user_type] = {"monolithic": mono_pick, "users": np.stack(users)}
        if proto is not None:
            by_proto = score_grid(sel.fedvpa.score, texts, candidates, prototype=proto)
            picks[user_type]["prototype"] = best(by_proto)
        named_right[user_type] = float(np.mean(right)) if right else None
    return picks, named_right


def win_rows(gold: np.ndarray, picks: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    """The comparisons of :data:`COMPARISONS` on the prompts ``mask`` selects (the prototype
    rows None where the run named no prototype for the type)."""
    g, mono, users = gold[mask], picks["monolithic"][mask], picks["users"][:, mask]
    values = {
        "prototype vs monolithic": None,
        "unseen user vs monolithic": np.mean([wins_against(g, u, mono) for u in users], axis=0),
        "prototype vs random": None,
        "unseen user vs random": np.mean([wins_against_random(g, u) for u in users], axis=0),
        "monolithic vs random": wins_against_random(g, mono),
        "gold best vs random": wins_against_random(g, best(g)),
    }
    if "prototype" in picks:
        proto = picks["prototype"][mask]
        values["prototype vs monolithic"] = wins_against(g, proto, mono)
        values["prototype vs random"] = wins_against_random(g, proto)
    return {name: None if v is None else bootstrap(v).to_dict() for name, v in values.items()}


def candidate_quality(candidates: list[list[str]]) -> dict[str, float]:
    """How many candidates are empty (the LM ended its turn at once) or repeat a sibling."""
    total = sum(len(group) for group in candidates)
    empty = sum(1 for group in candidates for c in group if not c.strip())
    repeated = sum(len(group) - len(set(group)) for group in candidates)
    return {"empty_share": empty / total, "duplicate_share": repeated / total}


def plot(results: dict[str, Any], path: Path) -> None:
    """Win rates with intervals: one panel per (collection, type), one bar group per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types, domains = results["user_types"], [d for d, n in results["prompts"].items() if n]
    fig, axes = plt.subplots(len(domains), len(types), figsize=(12, 3.6 * len(domains)),
                             sharey=True, squeeze=False)  # fmt: skip
    seeds = results["seeds"]
    width = 0.8 / len(seeds)
    for ax, (domain, user_type) in zip(
        axes.flat, [(d, t) for d in domains for t in types], strict=True
    ):
        for s, seed in enumerate(seeds):
            rows = seed["win_rates"][user_type][domain]
            blank = {"mean": np.nan, "low": np.nan, "high": np.nan}  # not measured: no bar
            rows = {c: rows[c] or blank for c in COMPARISONS}
            means = np.array([rows[c]["mean"] for c in COMPARISONS])
            low = np.nan_to_num(means - [rows[c]["low"] for c in COMPARISONS])
            high = np.nan_to_num(np.array([rows[c]["high"] for c in COMPARISONS]) - means)
            x = np.arange(len(COMPARISONS)) + s * width
            ax.bar(x, means, width, yerr=[low, high], capsize=2, label=f"seed {seed['seed']}")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{user_type} on {domain} prompts ({results['prompts'][domain]})")
        ax.set_xticks(np.arange(len(COMPARISONS)) + 0.4 - width / 2)
        ax.set_xticklabels(COMPARISONS, rotation=30, ha="right", fontsize=8)
    axes.flat[0].set_ylabel("gold win rate")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"best-of-{results['n']} judged by per-type gold rewards (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(row: dict[str, float] | None) -> str:
    return "n/a" if row is None else f"{row['mean']:.3f} [{row['low']:.2f}, {row['high']:.2f}]"


def print_table(results: dict[str, Any]) -> None:
    """Markdown: one row per seed, type, collection; one column per comparison."""
    print(f"| seed | type | prompts | {' | '.join(COMPARISONS)} |")
    print("| --- " * (3 + len(COMPARISONS)) + "|")
    for seed in results["seeds"]:
        for user_type, by_domain in seed["win_rates"].items():
            for domain, rows in by_domain.items():
                cells = [_cell(rows[c]) for c in COMPARISONS]
                where = f"{domain} ({results['prompts'][domain]})"
                print(f"| {seed['seed']} | {user_type} | {where} | {' | '.join(cells)} |")


def evaluate_seed(
    sel: Selectors, pool: Pool, args: argparse.Namespace, prompts: list[tuple[str, str]],
    candidates: list[list[str]], grids: dict[str, np.ndarray],
) -> dict[str, Any]:  # fmt: skip
    """One seed's win rates per type and collection."""
    picks, named_right = seed_picks(sel, pool, args, prompts, candidates)
    domains = np.array([d for _, d in prompts])
    masks = {d: domains == d for d in (HARMLESS, HELPFUL) if (domains == d).any()}
    return {
        "seed": sel.seed,
        "profile_names_own_type": named_right,
        "win_rates": {
            t: {d: win_rows(grids[t], picks[t], m) for d, m in masks.items()}
            for t in pool.user_types
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = split_pool(args.eval_data, args.prompt_fraction)
    prompts = choose_prompts(
        pool.prompts, {HARMLESS: args.harmless_prompts, HELPFUL: args.helpful_prompts}
    )
    if args.candidates_only:
        candidates_for(prompts, args, out)
        print(f"wrote {out / 'candidates.json'}")
        return 0
    # everything that can fail fails before minutes of sampling
    selectors = [
        load_selectors(f, m, args.cache_dir)
        for f, m in zip(args.fedvpa, args.monolithic, strict=True)
    ]
    embed_with = cached_embedder(common_backbone(selectors), args.cache_dir)
    gold = fit_gold(pool.gold, pool.user_types, embed_with(pair_texts(pool.gold)))
    candidates = candidates_for(prompts, args, out)
    embed = embed_with(response_texts(prompts, candidates))
    grids = gold_grids(gold, embed, prompts, candidates)
    results = {
        "n": args.n,
        "generator": args.generator,
        "prompts": {d: sum(1 for _, x in prompts if x == d) for d in (HARMLESS, HELPFUL)},
        "candidates": candidate_quality(candidates),
        "user_types": pool.user_types,
        "gold_held_out_accuracy": gold.held_out,
        "pairs": {"gold": len(pool.gold), "context": len(pool.context)},
        "users_per_type": args.users,
        "context_size": args.context_size,
        "seeds": [evaluate_seed(s, pool, args, prompts, candidates, grids) for s in selectors],
        "notes": list(NOTES),
        "command": " ".join(["python benchmarks/best_of_n.py", *(argv or sys.argv[1:])]),
    }
    write_json_atomic(out / "best_of_n.json", results)
    plot(results, out / "best_of_n.png")
    print_table(results)
    print(f"gold held-out accuracy: {json.dumps(gold.held_out)}")
    print(f"candidates: {json.dumps(results['candidates'])}")
    print(f"wrote {out / 'best_of_n.json'} and {out / 'best_of_n.png'}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except FedVPAError as err:
        raise SystemExit(f"error: {err}") from None
