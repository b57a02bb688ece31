"""The domain-gated linear reward head (ModelConfig.head / domain_gate).

Each pair is routed by its prompt's domain, e -> [e (1 - g), e g]; the router is trained on the
training pairs' public source tags only and never reads a tag at evaluation.
"""

from __future__ import annotations

import math

import pytest
import torch
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.config import ModelConfig, ObjectiveConfig, method_spec
from fedvpa_secure.data.hh_rlhf import load_folder
from fedvpa_secure.data.protocols import make_pairs, pair_domain
from fedvpa_secure.data.types import ClientData, RawPair
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.heads import LinearRewardDecoder
from fedvpa_secure.model.objective import PriorContext, episode_loss
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.tensors import ClientTensors, domain_tensor, make_batch

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no HH-RLHF folder at {REAL}")
DIM = 6


def _raw(subset: str, **extra) -> RawPair:
    return RawPair("id", "Human: Q?", "a", "b", subset, "f.jsonl.gz:1", extra)


def test_pair_domain_names_the_hh_collection_of_the_prompt() -> None:
    assert pair_domain(_raw("harmless-base")) == "harmless"
    for subset in ("helpful-base", "helpful-online", "helpful-rejection-sampled"):
        assert pair_domain(_raw(subset)) == "helpful"
    # relabeled-dpl rows carry their source in data_subset
    assert pair_domain(_raw("relabeled-dpl", data_subset="harmless")) == "harmless"
    assert pair_domain(_raw("relabeled-dpl", data_subset="helpful")) == "helpful"
    assert pair_domain(_raw("synthetic-pets")) == ""


@needs_real
def test_real_p3_pairs_carry_their_domain_into_the_tensors() -> None:
    raw = load_folder(REAL, max_pairs_per_subset=30)
    pairs = make_pairs("p3", raw.pairs, seed=0)
    client = ClientData("c0", pairs[0].user_type, tuple(pairs))
    tags = domain_tensor(client)
    want = [1.0 if p.subset == "harmless-base" else 0.0 for p in pairs]
    assert tags.tolist() == want and 0 < sum(want) < len(want)
    # in p3 the harmless-base pairs are exactly the conflicting ones
    assert tags.bool().tolist() == [p.conflicting for p in pairs]


def _client(n: int = 12, seed: int = 0, user_type: int = 0) -> ClientTensors:
    gen = torch.Generator().manual_seed(seed)
    return ClientTensors(
        f"c{seed}",
        user_type,
        (torch.rand(n, generator=gen) > 0.5).float(),
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, 2, dtype=torch.long),
        domain=(torch.arange(n) % 2).float(),
        emb_a=torch.randn(n, DIM, generator=gen),
        emb_b=torch.randn(n, DIM, generator=gen),
    )


def test_batches_carry_the_tags_of_their_own_pairs() -> None:
    client = _client()
    batch = make_batch([(client, [0, 3, 5], [2, 7])])
    assert batch.ctx_domain.tolist() == [[0.0, 1.0, 1.0]]
    assert batch.query_domain.tolist() == [[0.0, 1.0]]
    untagged = ClientTensors(**{**client.__dict__, "domain": None})
    assert make_batch([(untagged, [0], [1])]).query_domain is None


def _model(method: str = "oracle", gate: bool = True, **fields) -> PreferenceModel:
    cfg = ModelConfig(head="linear", domain_gate=gate, latent_dim=4, hidden_dim=8, **fields)
    torch.manual_seed(0)
    return PreferenceModel(method_spec(method), cfg, ObjectiveConfig(), DIM, 2)


def test_linear_decoder_matches_hand_computation() -> None:
    dec = LinearRewardDecoder(3, 2)
    with torch.no_grad():
        dec.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        dec.bilinear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]))
    f = torch.tensor([[2.0, 1.0, 4.0]])
    z = torch.tensor([[0.5, -1.0]])
    want = (2 - 2 + 2) + (0.5 * 2 + -1.0 * 12) / math.sqrt(2)
    assert dec(f, z).item() == pytest.approx(want)
    assert dec(f, None).item() == pytest.approx(2.0)  # monolithic: no z-term


def test_the_gate_routes_a_pair_to_one_half_of_the_reward() -> None:
    model = _model("monolithic")
    client = _client(4)
    batch = make_batch([(client, [0], [1, 2])])
    w = torch.randn(1, 2 * DIM)
    with torch.no_grad():
        model.decoder.linear.weight.copy_(w)
        model.domain_gate.weight.zero_()
        diff = batch.query_a - batch.query_b
        for bias, half in ((1e4, slice(DIM, None)), (-1e4, slice(None, DIM))):
            model.domain_gate.bias.fill_(bias)  # g = 1 (harmless half) or g = 0
            got = model.query_logits(batch, None)
            torch.testing.assert_close(got, diff @ w[0, half], rtol=1e-5, atol=1e-5)


def test_the_router_learns_from_tags_only_and_evaluation_reads_none() -> None:
    model = _model("oracle")
    client = _client()
    batch = make_batch([(client, [0, 1, 2], [3, 4, 5, 6])])
    out = model(batch)
    assert "domain_nll" in out
    (bt_grad,) = torch.autograd.grad(
        out["logits"].sum(), model.domain_gate.weight, allow_unused=True
    )
    assert bt_grad is None or bt_grad.abs().max() == 0  # the reward path is detached
    (tag_grad,) = torch.autograd.grad(out["domain_nll"].sum(), model.domain_gate.weight)
    assert tag_grad.abs().max() > 0  # control: the tags do train it
    flipped = make_batch(
        [
            (
                ClientTensors(**{**client.__dict__, "domain": 1 - client.domain}),
                [0, 1, 2],
                [3, 4, 5, 6],
            )
        ]
    )
    again = model(flipped)
    torch.testing.assert_close(again["logits"], out["logits"])  # scores ignore the tags
    assert not torch.allclose(again["domain_nll"], out["domain_nll"])  # control


def test_objective_adds_the_weighted_router_loss_per_episode() -> None:
    spec = method_spec("monolithic")
    logits = torch.zeros(2, 3)
    labels, mask = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    outputs = {"logits": logits, "domain_nll": torch.tensor([0.2, 0.6])}
    none = PriorContext(None, None, None)
    parts = episode_loss(outputs, labels, mask, spec, ObjectiveConfig(domain_weight=0.5), none)
    torch.testing.assert_close(parts.per_episode, math.log(2) + torch.tensor([0.1, 0.3]))
    off = episode_loss(outputs, labels, mask, spec, ObjectiveConfig(domain_weight=0.0), none)
    torch.testing.assert_close(off.per_episode, torch.full((2,), math.log(2)))


def _domain_task(n: int, seed: int) -> list[ClientTensors]:
    """Type 0 prefers +x1 on ordinary prompts and -x1 on harmful ones; type 1 prefers +x1 always.

    The prompt's domain shows in x2 of both responses (their shared prompt), so a linear reward
    on e(a) - e(b), where the prompt cancels, cannot tell the domains apart; a gate can.
    """
    gen = torch.Generator().manual_seed(seed)
    clients = []
    for user_type in (0, 1):
        domain = (torch.rand(n, generator=gen) > 0.5).float()
        prompt = torch.zeros(n, DIM)
        prompt[:, 2] = 3.0 * (2 * domain - 1)
        a, b = torch.randn(n, DIM, generator=gen), torch.randn(n, DIM, generator=gen)
        a[:, 2] = b[:, 2] = 0.0
        plus = (a[:, 1] > b[:, 1]).float()
        label = torch.where((domain == 1) & (user_type == 0), 1 - plus, plus)
        clients.append(
            ClientTensors(
                f"t{user_type}",
                user_type,
                label,
                domain.bool(),
                torch.zeros(n, 2, dtype=torch.long),
                domain=domain,
                emb_a=a + prompt,
                emb_b=b + prompt,
            )
        )
    return clients


@pytest.mark.parametrize("gate", [True, False])
def test_a_domain_dependent_preference_needs_the_gate(gate: bool) -> None:
    model = _model("oracle", gate=gate)
    train, test = _domain_task(400, 0), _domain_task(200, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    batch = make_batch([(c, [0], list(range(1, c.n_pairs))) for c in train])
    cfg = ObjectiveConfig()
    for _ in range(300):
        parts = episode_loss(
            model(batch),
            batch.query_label,
            batch.query_mask,
            model.spec,
            cfg,
            PriorContext(None, None, None),
        )
        opt.zero_grad()
        parts.total().backward()
        opt.step()
    held = test[0]  # type 0 on harmful prompts: the pairs only a gate can get right
    eval_batch = make_batch([(held, [0], list(range(1, held.n_pairs)))])
    with torch.no_grad():
        pred = (model(eval_batch)["logits"] > 0).float()
    harmful = eval_batch.query_domain.bool()
    acc = (pred == eval_batch.query_label)[harmful].float().mean().item()
    if gate:
        assert acc >= 0.9
    else:  # control: one direction per type cannot flip with the domain
        assert acc <= 0.6


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ModelConfig(head="cnn"), r"head='cnn' is invalid: expected one of"),
        (lambda: ObjectiveConfig(domain_weight=-1.0), r"domain_weight=-1.0 is invalid"),
    ],
)
def test_bad_head_settings_are_refused_with_the_field_name(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
