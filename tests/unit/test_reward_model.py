"""The published model as a product: RewardModel load/personalise/score/save and the CLI.

A small real run (synthetic protocol, the real MiniLM backbone, FedVPA-GP with the likelihood
posterior) is published once per module; every check compares the product API with the code
path training and evaluation use, so a wiring mistake in the product shows up as a mismatch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvpa_secure import RewardModel
from fedvpa_secure.cli import main as cli_main
from fedvpa_secure.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from fedvpa_secure.data import build_federated_data
from fedvpa_secure.errors import ConfigError, DataError
from fedvpa_secure.reward_model import ContextPair, Profile
from fedvpa_secure.train.experiment import run_experiment
from fedvpa_secure.train.tensors import frozen_client_tensors, make_batch

REPO = Path(__file__).resolve().parents[2]
CACHE = str(REPO / ".cache" / "embeddings")
CONTEXT = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    cfg = ExperimentConfig(
        device="cpu",
        cache_dir=CACHE,
        train=TrainConfig(rounds=3, local_steps=3, context_size=8, query_size=4),
        data=DataConfig(
            n_clients=4, n_eval_clients=4, pairs_per_client=16, eval_pairs_per_client=16
        ),
        model=replace(ModelConfig(), posterior="likelihood", head="linear"),
    )
    data = build_federated_data(
        "synthetic", None, n_clients=4, pairs_per_client=16, n_eval_clients=4, seed=0
    )
    run_experiment(cfg, data, out)
    return out, data


@pytest.fixture(scope="module")
def model(run) -> RewardModel:
    return RewardModel.from_pretrained(run[0], device="cpu")


def _user(data, index: int = 0):
    client = data.eval_clients[index]
    pairs = client.pairs
    context = [
        ContextPair(
            p.prompt,
            p.response_a if p.preferred == 0 else p.response_b,
            p.response_b if p.preferred == 0 else p.response_a,
        )
        for p in pairs[:CONTEXT]
    ]
    return client, context


def _training_batch(model: RewardModel, client, user_types):
    """The same user through the training/evaluation path: ClientTensors -> make_batch."""
    (tensors,) = frozen_client_tensors(
        [client], user_types, lambda texts: model.embedder.embed(texts).float().numpy()
    )
    n = tensors.n_pairs
    return make_batch([(tensors, list(range(CONTEXT)), list(range(CONTEXT, n)))])


def test_the_profile_is_the_training_paths_posterior(model: RewardModel, run) -> None:
    client, context = _user(run[1])
    profile = model.personalize(context)
    batch = _training_batch(model, client, model.user_types)
    with torch.no_grad():
        z, resp = model.model.context_responsibilities(batch)
    np.testing.assert_allclose(profile.z, z[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(profile.responsibilities, resp[0].numpy(), atol=1e-4)
    assert profile.context_pairs == CONTEXT
    assert profile.type_probabilities is not None
    assert abs(sum(profile.type_probabilities.values()) - 1.0) < 1e-6
    assert set(profile.type_probabilities) <= set(model.user_types)


def test_prefer_is_the_training_paths_bradley_terry_probability(model: RewardModel, run) -> None:
    client, context = _user(run[1])
    profile = model.personalize(context)
    query = client.pairs[CONTEXT:]
    probs = model.prefer(
        [p.prompt for p in query],
        [p.response_a for p in query],
        [p.response_b for p in query],
        profile=profile,
    )
    batch = _training_batch(model, client, model.user_types)
    with torch.no_grad():
        logits = model.model.query_logits(batch, torch.tensor([profile.z]))
    expected = torch.sigmoid(logits[0][batch.query_mask[0]]).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    # control: another condition gives other probabilities, so the profile is what is used
    shifted = Profile(tuple(v + 1.0 for v in profile.z), None, None, CONTEXT)
    moved = model.prefer(
        [p.prompt for p in query],
        [p.response_a for p in query],
        [p.response_b for p in query],
        profile=shifted,
    )
    assert not np.allclose(moved, probs, atol=1e-4)


def test_scores_by_type_by_prototype_and_the_trl_reward_function(model: RewardModel) -> None:
    prompts = ["Human: how do I bake bread?", "Human: tell me a joke"]
    responses = ["Mix flour, water, yeast and salt.", "I would rather not."]
    named = model.report["switching_accuracy"]["type_prototypes"]
    for user_type, k in named.items():
        by_type = model.score(prompts, responses, user_type=user_type)
        np.testing.assert_allclose(by_type, model.score(prompts, responses, prototype=k))
    reward = model.reward_function(prototype=0)
    got = reward(prompts=prompts, completions=responses)
    assert isinstance(got, list) and all(isinstance(v, float) for v in got)
    np.testing.assert_allclose(got, model.score(prompts, responses, prototype=0), rtol=1e-6)
    chat = [[{"role": "assistant", "content": r}] for r in responses]
    np.testing.assert_allclose(reward(prompts=prompts, completions=chat), got, rtol=1e-6)
    # a chat prompt is rendered as the HH dialogue the model was trained on
    chat_prompts = [[{"role": "user", "content": p.removeprefix("Human: ")}] for p in prompts]
    np.testing.assert_allclose(reward(prompts=chat_prompts, completions=responses), got, rtol=1e-6)


def test_save_and_load_round_trip_with_its_model_card(model: RewardModel, tmp_path: Path) -> None:
    saved = model.save_pretrained(tmp_path / "saved")
    for name in ("model.safetensors", "prior.safetensors", "config.json", "README.md"):
        assert (saved / name).is_file(), name
    card = json.loads((saved / "model_card.json").read_text())
    assert card["method"] == "fedvpa-gp" and card["backbone"] == model.config.model.backbone
    assert card["accuracy_on_unseen_users"]["overall"] is not None
    readme = (saved / "README.md").read_text()
    assert "## Privacy" in readme and "user level: none" in readme  # this run had no user DP
    assert "record level: none" in readme  # ... and no DP-SGD: no "epsilon <= 0" claim
    again = RewardModel.from_pretrained(saved, device="cpu")
    prompts, responses = ["Human: hi"], ["Hello! How can I help?"]
    np.testing.assert_allclose(
        again.score(prompts, responses, prototype=1), model.score(prompts, responses, prototype=1)
    )


def test_clear_errors(model: RewardModel, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"report\.json does not exist"):
        RewardModel.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="is personalised"):
        model.score(["p"], ["r"])
    with pytest.raises(ConfigError, match="not several"):
        model.score(["p"], ["r"], prototype=0, user_type="x")
    with pytest.raises(ConfigError, match="unknown to this model"):
        model.score(["p"], ["r"], user_type="nobody")
    with pytest.raises(DataError, match="at least one"):
        model.personalize([])
    profile = Profile((0.0,) * model.model.latent_dim, None, None, 1)
    assert Profile.from_json(profile.to_json()) == profile


def test_score_and_label_cli(run, model: RewardModel, tmp_path: Path, capsys) -> None:
    _, context = _user(run[1])
    ctx = tmp_path / "me.jsonl"
    ctx.write_text(
        "".join(
            json.dumps({"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}) + "\n"
            for c in context
        )
    )
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"prompt": "Human: how do I bake bread?", "responses": ["Knead it.", "No idea."]},
        {"prompt": "Human: what is 2+2?", "responses": ["5", "4"]},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    argv = ["score", str(run[0]), "--context", str(ctx), "--input", str(pool), "--out", str(out)]
    argv += ["--profile-out", str(tmp_path / "profile.json"), "--device", "cpu"]
    assert cli_main(argv) == 0
    profile = Profile.from_json((tmp_path / "profile.json").read_text())
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    for row, line in zip(rows, scored, strict=True):
        expected = model.score([row["prompt"]] * 2, row["responses"], profile=profile)
        np.testing.assert_allclose(line["rewards"], expected, rtol=1e-5)
    dpo = tmp_path / "dpo.jsonl"
    argv = ["label", str(run[0]), "--prototype", "0", "--pairs", str(pool), "--out", str(dpo)]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    labelled = [json.loads(line) for line in dpo.read_text().splitlines()]
    for row, line in zip(rows, labelled, strict=True):
        assert set(line) == {"prompt", "chosen", "rejected"}
        assert line["prompt"] == row["prompt"] + "\n\nAssistant: "  # prompt + chosen = scored
        a, b = row["responses"]
        p = model.prefer([row["prompt"]], [a], [b], prototype=0)[0]
        assert (line["chosen"], line["rejected"]) == ((a, b) if p >= 0.5 else (b, a))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "responses": ["only one"]}\n')
    assert cli_main(["label", str(run[0]), "--prototype", "0", "--pairs", str(bad), "--out",
                     str(tmp_path / "x.jsonl")]) == 2  # fmt: skip
    assert "exactly two responses" in capsys.readouterr().err


def test_the_card_scopes_the_user_level_claim_by_its_sampling_rate() -> None:
    from fedvpa_secure.reward_model import _user_level_line

    base = {"epsilon": 4.0, "delta": 1e-5, "accountant": "rdp", "clip_norm": 1.0}
    assert "no amplification claimed" in _user_level_line({**base, "sample_rate": 1.0})
    amplified = _user_level_line({**base, "sample_rate": 0.25})
    assert "amplified by sampling clients at rate 0.25" in amplified
    assert "not a server that saw who took part" in amplified


def test_a_method_without_a_latent_refuses_a_profile(model: RewardModel) -> None:
    monolithic = RewardModel(
        replace(
            model.config,
            method="monolithic",
            model=replace(model.config.model, posterior="encoder"),
        ),
        model.model,
        model.embedder,
        model.user_types,
        model.report,
    )
    monolithic.model.spec = replace(model.model.spec, latent=False, oracle=False)
    try:
        with pytest.raises(ConfigError, match="not personalised"):
            monolithic.score(["p"], ["r"], prototype=0)
    finally:
        monolithic.model.spec = model.config.spec  # the module's model is shared


def test_the_reward_function_drives_a_trl_grpo_trainer(model: RewardModel, tmp_path: Path) -> None:
    """Two GRPO steps of a tiny config-built policy, rewarded by the published model: every
    completion TRL scores gets exactly the product's score, and the logged mean reward is theirs.
    """
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from fedvpa_secure.alignment.generate import load_causal_lm

    policy, tokenizer = load_causal_lm("tiny-causal")
    reward = model.reward_function(prototype=0)
    calls: list[tuple[list[str], list[str], list[float]]] = []

    def recorded(prompts, completions, **kwargs):
        values = reward(prompts, completions, **kwargs)
        calls.append((list(prompts), list(completions), values))
        return values

    prompts = Dataset.from_list([{"prompt": f"Human: tell me about pet {i}"} for i in range(4)])
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=recorded,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    trainer.train()
    assert len(calls) == 2
    for call_prompts, completions, values in calls:
        assert len(values) == len(completions) == 4
        expected = model.score(call_prompts, completions, prototype=0)
        assert values == pytest.approx(expected.tolist(), abs=1e-5)
    logged = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    assert logged == pytest.approx([float(np.mean(v)) for _, _, v in calls], abs=1e-4)


def test_the_card_of_an_in_process_user_dp_run_matches_its_audit(tmp_path: Path) -> None:
    """``experiment --user-dp-epsilon`` (SecAgg in process, server ledger): the saved card's
    user-level epsilon and delta are the ledger's, re-verified; no record-level claim is made."""
    from privacy.audit import audit_path

    out = tmp_path / "udp"
    code = cli_main([
        "experiment", "--protocol", "synthetic", "--clients", "5", "--eval-clients", "2",
        "--pairs-per-client", "16", "--rounds", "2", "--local-steps", "2", "--context-size", "8",
        "--query-size", "4", "--user-dp-epsilon", "6", "--secure-agg", "--device", "cpu",
        "--cache-dir", CACHE, "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    saved = RewardModel.from_pretrained(out, device="cpu").save_pretrained(tmp_path / "saved")
    card = json.loads((saved / "model_card.json").read_text())
    audit = audit_path(out)
    assert audit.ok
    (ledger,) = [led for led in audit.ledgers if led.rows]
    user = card["privacy"]["user_level"]
    assert user["epsilon"] == pytest.approx(ledger.rows[-1].epsilon_recomputed, rel=1e-9)
    assert user["delta"] == ledger.genesis.delta
    assert 0 < user["epsilon"] <= 6.0
    assert card["privacy"]["record_level"] is None
    readme = (saved / "README.md").read_text()
    assert f"epsilon {user['epsilon']:.3f}" in readme or f"epsilon {user['epsilon']:.4g}" in readme
    assert "ledger audit (1 ledgers re-verified): passed" in readme


HH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf"


@pytest.mark.skipif(not HH.is_dir(), reason="needs the HH-RLHF copy in ../shared/data")
def test_label_real_hh_rows_into_a_dpo_dataset_that_trains(run, tmp_path: Path) -> None:
    """HH-RLHF's own dialogue layout in, TRL's DPO layout out: ``datasets`` loads it with the
    three columns, ``score`` reads the same file, and ``dpo`` trains two steps on it."""
    import gzip

    pytest.importorskip("trl")
    from datasets import load_dataset

    with gzip.open(HH / "harmless-base" / "test_dev.jsonl.gz", "rt") as handle:
        lines = handle.read().splitlines()[:6]
    pool = tmp_path / "hh.jsonl"
    pool.write_text("\n".join(lines) + "\n")
    dpo = tmp_path / "dpo.jsonl"
    argv = ["label", str(run[0]), "--prototype", "1", "--pairs", str(pool), "--out", str(dpo)]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    dataset = load_dataset("json", data_files=str(dpo), split="train")
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(dataset) == 6
    for row, line in zip(dataset, lines, strict=True):
        original = json.loads(line)
        assert row["prompt"].endswith("\n\nAssistant: ")
        written = {row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]}
        # the dialogues come back whole (less HH's leading blank line); the order is the model's
        assert written == {original["chosen"].lstrip(), original["rejected"].lstrip()}
    scores = tmp_path / "scores.jsonl"
    argv = ["score", str(run[0]), "--prototype", "1", "--input", str(pool), "--out", str(scores)]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    assert len(scores.read_text().splitlines()) == 6
    policy = tmp_path / "policy"
    argv = ["dpo", "--pairs", str(dpo), "--policy", "tiny-causal", "--steps", "2"]
    assert cli_main([*argv, "--batch-size", "3", "--device", "cpu", "--out", str(policy)]) == 0
    report = json.loads((policy / "dpo_report.json").read_text())
    assert report["pairs"] == 6 and len(report["history"]) == 2


def test_the_embedding_cache_scores_alike_and_never_stores_a_users_context(
    run, model: RewardModel, tmp_path: Path
) -> None:
    from fedvpa_secure.data.types import join_prompt_response
    from fedvpa_secure.model.embedding_cache import EmbeddingCache

    cached = RewardModel.from_pretrained(run[0], device="cpu", embedding_cache=tmp_path)
    _, context = _user(run[1])
    prompts, responses = ["Human: cats or dogs?"] * 2, ["Cats, clearly.", "Dogs, clearly."]
    profile = cached.personalize(context)
    assert profile.z == pytest.approx(model.personalize(context).z, abs=1e-5)
    np.testing.assert_allclose(
        cached.score(prompts, responses, profile=profile),
        model.score(prompts, responses, profile=profile),
        atol=1e-5,
    )
    info = model.embedder.info
    on_disk = EmbeddingCache(tmp_path, info.key, info.hidden_size)
    private = [join_prompt_response(c.prompt, c.chosen) for c in context]
    assert on_disk.missing(private) == private  # the user's pairs never reached the shared folder
    scored = [join_prompt_response(p, r) for p, r in zip(prompts, responses, strict=True)]
    assert on_disk.missing(scored) == []  # control: what score embedded was stored
    lora = replace(model.config, model=replace(model.config.model, mode="lora"))
    with pytest.raises(ConfigError, match="frozen backbone only"):
        RewardModel(lora, model.model, model.embedder, model.user_types, {}, None, tmp_path)
