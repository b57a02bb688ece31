"""``fedvpa-secure score`` and ``label``: use a trained reward model for one user or one type.

``score MODEL (--context USER.jsonl | --prototype K | --user-type T) --input IN --out OUT``
writes one reward per response. ``label MODEL ... --pairs POOL --out DPO.jsonl`` orders each
pair of a pool by the model's preference for that user or type and writes TRL's DPO layout
(prompt, chosen, rejected): the input of the alignment stage.

Inputs are JSON lines, either in HH-RLHF's dialogue layout (``{"chosen": dialogue, "rejected":
dialogue}``), or ``{"prompt": ..., "responses": [...]}`` (score, label: two responses), or a
labelled pair ``{"prompt", "chosen", "rejected"}`` (context). The context never leaves this
process: the profile is inferred here, from the published model alone.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedvpa_secure.errors import DataError
from fedvpa_secure.json_lines import read_objects

HELP = {
    "score": "rewards for responses, personalised to a user or a type",
    "label": "a per-user or per-type preference dataset in TRL's DPO layout",
}


def register(sub: argparse._SubParsersAction) -> None:
    register_command(sub, "score")


def register_command(sub: argparse._SubParsersAction, name: str) -> None:
    """``score`` or ``label``: the same model, profile and input options."""
    p = sub.add_parser(name, help=HELP[name], description=__doc__.splitlines()[0])
    p.add_argument("model", help="a run folder or a folder RewardModel.save_pretrained wrote")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--context", help="the user's own labelled pairs (JSON lines)")
    who.add_argument("--prototype", type=int, help="score as prior prototype K")
    who.add_argument("--user-type", help="score as a user type the run named")
    p.add_argument(
        "--input" if name == "score" else "--pairs",
        dest="input",
        required=True,
        help="JSON lines: HH-RLHF dialogues or {prompt, responses}"
        + (" (two responses each)" if name == "label" else ""),
    )
    p.add_argument("--out", required=True, help="JSON lines written here")
    p.add_argument("--profile-out", help="also write the inferred profile (JSON) here")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=run, action_name=name)


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.reward_model import RewardModel

    model = RewardModel.from_pretrained(args.model, device=args.device)
    who: dict[str, Any] = {}
    if args.context:
        profile = model.personalize(list(read_context(Path(args.context))))
        who["profile"] = profile
        if args.profile_out:
            target = Path(args.profile_out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(profile.to_json(), encoding="utf-8")
        types = profile.type_probabilities
        print(
            f"profile from {profile.context_pairs} context pairs"
            + (f"; type probabilities {types}" if types else "")
        )
    elif args.prototype is not None:
        who["prototype"] = args.prototype
    elif args.user_type:
        who["user_type"] = args.user_type
    rows = list(read_candidates(Path(args.input)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.action_name == "score":
        written = write_scores(model, rows, out, who)
    else:
        written = write_labels(model, rows, out, who)
    print(f"wrote {written} lines to {out}")
    return 0


def write_scores(model, rows: list[Candidates], out: Path, who: dict) -> int:
    prompts = [p for _, p, responses in rows for _ in responses]
    responses = [r for _, _, rs in rows for r in rs]
    rewards = iter(model.score(prompts, responses, **who).tolist())
    with open(out, "w", encoding="utf-8") as handle:
        for _, prompt, rs in rows:
            scores = [next(rewards) for _ in rs]
            handle.write(json.dumps({"prompt": prompt, "responses": rs, "rewards": scores}) + "\n")
    return len(rows)


def write_labels(model, rows: list[Candidates], out: Path, who: dict) -> int:
    bad = [line for line, _, rs in rows if len(rs) != 2]
    if bad:
        raise DataError(f"label needs exactly two responses per line; lines {bad[:5]} differ")
    p_first = model.prefer(
        [p for _, p, _ in rows], [rs[0] for _, _, rs in rows], [rs[1] for _, _, rs in rows], **who
    )
    with open(out, "w", encoding="utf-8") as handle:
        for (_, prompt, (a, b)), p in zip(rows, p_first.tolist(), strict=True):
            chosen, rejected = (a, b) if p >= 0.5 else (b, a)
            row = {
                "prompt": dpo_prompt(prompt),
                "chosen": chosen.strip(),
                "rejected": rejected.strip(),
            }
            handle.write(json.dumps(row) + "\n")
    return len(rows)


def dpo_prompt(prompt: str) -> str:
    """The prompt as TRL's DPO concatenates it: prompt + chosen is exactly the text the model
    scored (:func:`~fedvpa_secure.data.types.join_prompt_response`)."""
    prompt = prompt.rstrip()
    return f"{prompt}\n\nAssistant: " if prompt else ""


def _split_dialogues(row: dict, where: str) -> tuple[str, str, str]:
    from fedvpa_secure.data.dialogue import DialogueFormatError, split_dialogue_pair

    try:
        return split_dialogue_pair(row["chosen"], row["rejected"])
    except DialogueFormatError as err:
        raise DataError(f"{where}: {err}") from err


def read_context(path: Path):
    """The user's labelled pairs: ``{prompt, chosen, rejected}`` or HH-RLHF dialogues."""
    from fedvpa_secure.reward_model import ContextPair

    for number, row in read_objects(path):
        where = f"{path}:{number}"
        if not (isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str)):
            raise DataError(f'{where}: a context line needs "chosen" and "rejected" strings')
        if isinstance(row.get("prompt"), str):
            yield ContextPair(row["prompt"], row["chosen"], row["rejected"])
        else:
            yield ContextPair(*_split_dialogues(row, where))


Candidates = tuple[int, str, list[str]]
"""(line number, prompt, responses) of one input line."""


def read_candidates(path: Path) -> Iterator[Candidates]:
    """Per line: ``{prompt, responses}``, ``{prompt, chosen, rejected}`` (both responses, in
    that order) or HH-RLHF dialogues (both)."""
    for number, row in read_objects(path):
        where = f"{path}:{number}"
        responses = row.get("responses")
        pair = isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str)
        if isinstance(row.get("prompt"), str) and isinstance(responses, list):
            if not responses or not all(isinstance(r, str) for r in responses):
                raise DataError(f"{where}: responses must be a non-empty list of strings")
            yield number, row["prompt"], list(responses)
        elif pair and isinstance(row.get("prompt"), str):
            yield number, row["prompt"], [row["chosen"], row["rejected"]]
        elif pair:
            prompt, first, second = _split_dialogues(row, where)
            yield number, prompt, [first, second]
        else:
            raise DataError(
                f'{where}: expected {{"prompt", "responses": [...]}}, {{"prompt", "chosen", '
                '"rejected"} or HH-RLHF {"chosen", "rejected"} dialogues'
            )
