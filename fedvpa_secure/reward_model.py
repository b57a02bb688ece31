"""The trained personalised reward model as a product: load, personalise, score, save.

A run (``experiment``, ``simulate``, the server) publishes ``model.safetensors`` next to its
``report.json``; :meth:`RewardModel.from_pretrained` rebuilds the model from those two files and
the backbone's public name, and :meth:`RewardModel.save_pretrained` writes a self-contained folder
(config, weights, prior, a peft adapter folder in lora mode, and a model card stating the run's
privacy guarantee as its ledgers record it).

Personalisation runs where the user is: :meth:`RewardModel.personalize` turns a user's own
labelled pairs into a :class:`Profile` (latent z, responsibilities over the prior's prototypes,
type probabilities) with the published model alone. It never needs the server, and nothing
about the user leaves the process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.data.types import join_prompt_response
from fedvpa_secure.errors import ConfigError, DataError
from fedvpa_secure.model.backbone import Backbone, pick_device
from fedvpa_secure.model.embedding_cache import EmbeddingCache
from fedvpa_secure.model.preference_model import EpisodeBatch, PreferenceModel
from fedvpa_secure.model.prior import responsibilities
from fedvpa_secure.train.experiment import build_model
from fedvpa_secure.train.features import PreparedClients, add_lora
from fedvpa_secure.train.model_io import (
    CHECKPOINT_RUN_FILE,
    MODEL_FILE,
    load_global_model,
    save_global_model,
)

REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"
CARD_JSON = "model_card.json"
CARD_README = "README.md"
PRIOR_FILE = "prior.safetensors"
ADAPTER_DIR = "adapter"
EMBED_BATCH = 32
"""Texts embedded per backbone call: the size ``prepare_clients`` uses for training."""


@dataclass(frozen=True)
class Profile:
    """One user's personalisation, computed locally from that user's own labelled pairs.

    Attributes:
        z: the posterior mean of the latent (the decoder's condition).
        responsibilities: probability of each prior prototype (likelihood posterior only).
        type_probabilities: user type -> probability, where the run named a distinct prototype
            per type (from its evaluation users); ``None`` otherwise.
        context_pairs: how many pairs it was inferred from.
    """

    z: tuple[float, ...]
    responsibilities: tuple[float, ...] | None
    type_probabilities: dict[str, float] | None
    context_pairs: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        raw = json.loads(text)
        resp = raw.get("responsibilities")
        return cls(
            z=tuple(float(v) for v in raw["z"]),
            responsibilities=None if resp is None else tuple(float(v) for v in resp),
            type_probabilities=raw.get("type_probabilities"),
            context_pairs=int(raw.get("context_pairs", 0)),
        )


@dataclass(frozen=True)
class ContextPair:
    """A pair the user labelled: the prompt, the response it preferred and the other one."""

    prompt: str
    chosen: str
    rejected: str


class RewardModel:
    """A published FedVPA-GP (or baseline) reward model, ready to score responses for a user.

    Build it with :meth:`from_pretrained`; the constructor takes already-built parts.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        model: PreferenceModel,
        embedder: Backbone,
        user_types: Sequence[str],
        report: dict[str, Any],
        source: Path | None = None,
        embedding_cache: str | Path | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.model = model.eval()
        self.embedder = embedder
        self.user_types = list(user_types)
        self.report = report
        self.device = next(model.parameters()).device
        self._cache = None
        if embedding_cache is not None:
            if config.model.mode != "frozen":
                raise ConfigError(
                    "an embedding cache serves a frozen backbone only; this model was trained in "
                    f"{config.model.mode!r} mode, whose embeddings depend on its adapter"
                )
            info = embedder.info
            self._cache = EmbeddingCache(embedding_cache, info.key, info.hidden_size)

    # -- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "auto",
        embedding_cache: str | Path | None = None,
    ) -> RewardModel:
        """Load a run folder (``experiment`` / ``simulate`` / server run_dir) or a saved folder.

        ``embedding_cache`` (frozen mode): a folder of cached backbone embeddings, e.g. the
        ``.cache/embeddings`` training filled; texts seen before are not embedded again, which
        is what makes scoring thousands of best-of-N candidates quick.

        Raises:
            DataError: the folder has no published model or report, or they do not match.
        """
        from fedvpa_secure.server.settings import experiment_from_dict

        folder = Path(path)
        report, report_path = _read_report(folder)
        raw_config = report.get("config")
        if not isinstance(raw_config, dict):
            raise DataError(f"{report_path} holds no run config; is this a run folder?")
        if not (folder / MODEL_FILE).is_file():
            raise DataError(
                f"{folder / MODEL_FILE} does not exist: the run did not publish its model (it "
                "stopped before a round completed, or predates publishing)"
            )
        try:
            config = experiment_from_dict(raw_config)
        except ConfigError as err:
            raise DataError(f"{report_path}: its run config is invalid: {err}") from err
        user_types = report.get("user_types") or []
        torch_device = pick_device(device)
        backbone = Backbone(config.model.backbone, config.model.max_length).to(torch_device)
        if config.model.mode == "lora":
            backbone = add_lora(backbone, config.model)
        else:
            for p in backbone.parameters():
                p.requires_grad_(False)
        shapes = PreparedClients(
            [],
            [],
            backbone.info.hidden_size,
            backbone if config.model.mode == "lora" else None,
            {},
        )
        model = build_model(config, shapes, len(user_types), torch_device)
        load_global_model(model, folder / MODEL_FILE)
        return cls(config, model, backbone, user_types, report, folder, embedding_cache)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a folder :meth:`from_pretrained` loads: report/config, weights, prior, card.

        In lora mode the adapter is also saved as a peft folder (``adapter/``), loadable onto
        the public backbone by peft alone.
        """
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_global_model(self.model, out / MODEL_FILE)
        prior = {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in (
                ("prototypes", self.model.prototypes),
                ("log_pi", getattr(self.model, "log_pi", None)),
                ("prior_var", getattr(self.model, "prior_var", None)),
            )
            if tensor is not None
        }
        if prior:
            save_file(prior, str(out / PRIOR_FILE), metadata={"format": "fedvpa-prior"})
        if self.config.model.mode == "lora" and hasattr(self.embedder.model, "save_pretrained"):
            self.embedder.model.save_pretrained(str(out / ADAPTER_DIR))
        report = {**self.report, "audit": self.audit()}
        write_json_atomic(out / REPORT_FILE, report)
        write_json_atomic(out / CONFIG_FILE, self.config.to_dict())
        card = model_card(report, self.config)
        write_json_atomic(out / CARD_JSON, card)
        (out / CARD_README).write_text(render_card(card))
        return out

    def audit(self) -> dict[str, Any] | None:
        """Re-verify the run's privacy ledgers (``fedvpa-secure audit``'s check) for the card.

        A folder written by :meth:`save_pretrained` carries no ledgers: it keeps the result
        recorded when it was saved from its run.
        """
        from privacy.audit import audit_path
        from privacy.ledger import find_ledgers

        if self.source is None or not find_ledgers(self.source):
            return self.report.get("audit")
        result = audit_path(self.source)
        by_unit: dict[str, dict[str, Any]] = {}
        for ledger in result.ledgers:
            g = ledger.genesis
            if g is None or not ledger.rows:  # a genesis alone: nothing was ever released
                continue
            last = ledger.rows[-1]
            spent = max(last.entry.epsilon_after, last.epsilon_recomputed)
            who = "server" if g.actor == "server" else "clients"
            group = by_unit.setdefault(
                f"{g.unit}/{who}",
                {"max_epsilon": 0.0, "delta": g.delta, "accountants": [], "actors": []},
            )
            group["max_epsilon"] = max(group["max_epsilon"], float(spent))
            group["delta"] = max(group["delta"], g.delta)
            if g.accountant not in group["accountants"]:
                group["accountants"].append(g.accountant)
            group["actors"].append(g.actor)
        return {
            "passed": result.ok,
            "ledgers": len(result.ledgers),
            "findings": [str(f) for f in result.findings[:10]],
            "epsilon_by_unit": by_unit,
        }

    # -- personalisation ------------------------------------------------------------------------

    @torch.no_grad()
    def personalize(self, context: Sequence[ContextPair]) -> Profile:
        """Infer this user's profile from their own labelled pairs (locally; no server).

        Raises:
            DataError: no context pairs, or the method has no latent to personalise.
        """
        if not context:
            raise DataError("personalize needs at least one labelled pair of the user")
        if not self.model.spec.latent:
            raise DataError(
                f"method {self.config.method!r} has no user latent: score with it directly, "
                "without a profile"
            )
        chosen = self._embed(
            [join_prompt_response(p.prompt, p.chosen) for p in context], persist=False
        )
        rejected = self._embed(
            [join_prompt_response(p.prompt, p.rejected) for p in context], persist=False
        )
        batch = _context_batch(chosen, rejected, self.device)
        resp = None
        if self.model.likelihood_posterior:
            z, r = self.model.context_responsibilities(batch)
            resp = r[0].cpu()
        else:
            z, _ = self.model.encode(batch)
            if self.model.prototypes is not None:  # the prior's responsibilities, as evaluation
                protos = self.model.prototypes.detach()
                k = protos.shape[0]
                log_pi = getattr(self.model, "log_pi", torch.zeros(k, device=self.device))
                var = getattr(self.model, "prior_var", torch.ones(k, device=self.device))
                resp = responsibilities(z, protos, log_pi, var)[0].cpu()
        return Profile(
            z=tuple(float(v) for v in z[0].cpu()),
            responsibilities=None if resp is None else tuple(float(v) for v in resp),
            type_probabilities=self._type_probabilities(resp),
            context_pairs=len(context),
        )

    def _type_probabilities(self, resp: torch.Tensor | None) -> dict[str, float] | None:
        """Each type's share of the responsibility of the prototype the run named for it."""
        named = (self.report.get("switching_accuracy") or {}).get("type_prototypes")
        if resp is None or not named or len(set(named.values())) < len(named):
            return None  # no naming, or two types named after one prototype: ambiguous
        mass = {t: float(resp[k]) for t, k in named.items() if 0 <= k < len(resp)}
        total = sum(mass.values())
        return {t: m / total for t, m in mass.items()} if total > 0 else None

    def condition(
        self,
        profile: Profile | None = None,
        prototype: int | None = None,
        user_type: str | None = None,
    ) -> torch.Tensor | None:
        """The decoder's condition for one of: a profile, a prototype index, or a user type."""
        given = [x is not None for x in (profile, prototype, user_type)]
        if sum(given) > 1:
            raise ConfigError("give one of profile, prototype or user_type, not several")
        if not self.model.spec.latent and not self.model.spec.oracle:
            if any(given):
                raise ConfigError(
                    f"method {self.config.method!r} is not personalised: it scores every user "
                    "alike; call it without profile, prototype or user_type"
                )
            return None
        if profile is not None:
            if len(profile.z) != self.model.latent_dim:
                raise ConfigError(
                    f"the profile has {len(profile.z)} latent dimensions, this model "
                    f"{self.model.latent_dim}: it was made with another model"
                )
            return torch.tensor(profile.z, dtype=torch.float32, device=self.device)
        if prototype is not None:
            protos = self.model.prototypes
            if protos is None:
                raise ConfigError(f"method {self.config.method!r} has no prototypes")
            if not 0 <= prototype < protos.shape[0]:
                raise ConfigError(f"prototype {prototype} out of range 0..{protos.shape[0] - 1}")
            return protos[prototype].detach()
        if user_type is not None:
            vectors = (self.report.get("switching_accuracy") or {}).get("type_vectors") or {}
            if user_type not in vectors:
                raise ConfigError(
                    f"user type {user_type!r} unknown to this model; known: {sorted(vectors)}"
                )
            return torch.tensor(vectors[user_type], dtype=torch.float32, device=self.device)
        raise ConfigError(
            f"method {self.config.method!r} is personalised: give a profile (personalize), a "
            "prototype index or a user type"
        )

    # -- scoring --------------------------------------------------------------------------------

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        profile: Profile | None = None,
        prototype: int | None = None,
        user_type: str | None = None,
    ) -> np.ndarray:
        """Rewards r(prompt, response | user) for aligned lists of prompts and responses.

        A single response has no partner for the domain gate's pair mean, so the gate reads the
        response's own embedding (prompt plus response; the prompt dominates it, as in a pair).
        """
        if len(prompts) != len(responses):
            raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return np.zeros(0, dtype=np.float32)
        cond = self.condition(profile, prototype, user_type)
        emb = self._embed(
            [join_prompt_response(p, r) for p, r in zip(prompts, responses, strict=True)]
        )
        return self._rewards(emb, emb, cond)

    @torch.no_grad()
    def prefer(
        self,
        prompts: Sequence[str],
        first: Sequence[str],
        second: Sequence[str],
        **who: Any,
    ) -> np.ndarray:
        """P(the user prefers ``first`` over ``second``): the Bradley-Terry probability."""
        if not len(prompts) == len(first) == len(second):
            raise DataError("prompts, first and second must have the same length")
        if not prompts:
            return np.zeros(0, dtype=np.float32)
        cond = self.condition(**who)
        ea = self._embed([join_prompt_response(p, r) for p, r in zip(prompts, first, strict=True)])
        eb = self._embed([join_prompt_response(p, r) for p, r in zip(prompts, second, strict=True)])
        gate_input = (ea + eb) / 2  # the pair's gate, exactly as in training
        margin = self._rewards(ea, gate_input, cond) - self._rewards(eb, gate_input, cond)
        return 1.0 / (1.0 + np.exp(-margin))

    def reward_function(self, **who: Any) -> Callable[..., list[float]]:
        """A callable in the shape TRL's GRPO/PPO/best-of-N trainers take as a reward function:
        ``f(prompts, completions, **kwargs) -> list[float]`` (plain strings or chat messages)."""
        self.condition(**who)  # fail now, not inside a training loop

        def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
            texts = [as_text(c, completion=True) for c in completions]
            return [float(v) for v in self.score([as_text(p) for p in prompts], texts, **who)]

        reward.__name__ = f"fedvpa_{self.config.method}_reward"
        return reward

    def _rewards(
        self, emb: torch.Tensor, gate_input: torch.Tensor, cond: torch.Tensor | None
    ) -> np.ndarray:
        features = emb
        if self.model.domain_gate is not None:
            g = torch.sigmoid(self.model.domain_gate(gate_input))
            features = torch.cat([emb * (1 - g), emb * g], dim=-1)
        features = self.model.feature(features).unsqueeze(0)  # (1, N, H)
        c = None if cond is None else cond.reshape(1, 1, -1)
        return self.model.decoder(features, c)[0].float().cpu().numpy()

    def _embed(self, texts: list[str], persist: bool = True) -> torch.Tensor:
        """Backbone embeddings, through the embedding cache when there is one. ``persist=False``
        (a user's private context pairs) reads the cache but never writes to it: the cache is a
        shared folder, and its text hashes would tell anyone with access which pairs a user
        labelled."""
        if self._cache is not None and persist:
            self._cache.fill(texts, self._embed_numpy, batch_size=EMBED_BATCH)
            return torch.from_numpy(self._cache.get(texts)).to(self.device)
        if self._cache is not None:
            missing = self._cache.missing(texts)
            fresh = dict(zip(missing, self._embed_uncached(missing).cpu(), strict=True))
            rows = [
                fresh[t] if t in fresh else torch.from_numpy(self._cache.get([t])[0]) for t in texts
            ]
            return torch.stack(rows).to(self.device)
        return self._embed_uncached(texts)

    def _embed_uncached(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.embedder.info.hidden_size, device=self.device)
        parts = [
            self.embedder.embed(texts[i : i + EMBED_BATCH]).float()
            for i in range(0, len(texts), EMBED_BATCH)
        ]
        return torch.cat(parts).to(self.device)

    @torch.no_grad()
    def _embed_numpy(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts).float().cpu().numpy()


def _context_batch(chosen: torch.Tensor, rejected: torch.Tensor, device: torch.device):
    k = chosen.shape[0]
    empty = torch.zeros(1, 0, dtype=torch.bool, device=device)
    return EpisodeBatch(
        ctx_chosen=chosen.unsqueeze(0),
        ctx_rejected=rejected.unsqueeze(0),
        ctx_mask=torch.ones(1, k, dtype=torch.bool, device=device),
        query_a=None,
        query_b=None,
        query_label=empty.float(),
        query_mask=empty,
        user_type=torch.zeros(1, dtype=torch.long, device=device),
    )


ROLE_MARKERS = {"user": "Human", "system": "Human", "assistant": "Assistant"}
"""Chat roles in HH-RLHF's dialogue layout (it has only Human and Assistant turns)."""


def as_text(item: Any, completion: bool = False) -> str:
    """A prompt or completion as the text the model was trained on.

    Prompts in chat form become HH dialogue turns (``Human: ...\n\nAssistant: ...``); a
    completion in chat form is its assistant message(s), which :func:`join_prompt_response`
    places after the prompt's ``Assistant:`` marker.
    """
    if isinstance(item, str):
        return item
    if not (isinstance(item, Sequence) and item and all(isinstance(m, dict) for m in item)):
        raise DataError(f"expected a string or a non-empty list of chat messages, got {item!r:.80}")
    if completion:
        return "\n\n".join(str(m.get("content", "")).strip() for m in item)
    turns = [f"{ROLE_MARKERS.get(m.get('role'), 'Human')}: {str(m.get('content', '')).strip()}"
             for m in item]  # fmt: skip
    return "\n\n".join(turns)


def _read_report(folder: Path) -> tuple[dict[str, Any], Path]:
    """The run's report, or a server round checkpoint's ``run.json`` (config and user types;
    its accuracy and privacy facts are in the run's report, written when the run ends)."""
    path = folder / REPORT_FILE
    if not path.is_file() and (folder / CHECKPOINT_RUN_FILE).is_file():
        path = folder / CHECKPOINT_RUN_FILE
    if not path.is_file():
        raise DataError(
            f"{folder / REPORT_FILE} does not exist: give a run folder (experiment/simulate OUT, "
            "a server run_dir), a server round checkpoint or a folder RewardModel.save_pretrained "
            "wrote"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read as JSON: {err}") from err
    if not isinstance(report, dict):
        raise DataError(f"{path} is not a run report (expected a JSON object)")
    return report, path


# -- the model card ----------------------------------------------------------------------------


def model_card(report: dict[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """What the model is and what it guarantees, read from the run's report (never guessed)."""
    privacy = report.get("privacy") or {}
    accuracy = report.get("accuracy") or {}
    return {
        "method": config.method,
        "backbone": config.model.backbone,
        "mode": config.model.mode,
        "head": config.model.head,
        "protocol": report.get("protocol"),
        "data": report.get("data"),
        "user_types": report.get("user_types"),
        "rounds": report.get("completed_rounds", len(report.get("rounds") or [])),
        "accuracy_on_unseen_users": {
            k: accuracy.get(k) for k in ("overall", "conflicting", "agreeing", "per_type")
        },
        "evaluation_pairs": accuracy.get("n_pairs"),
        "secure_aggregation": report.get("secure", privacy.get("secure_aggregation")),
        "privacy": {
            "record_level": privacy.get("record_level"),
            "user_level": privacy.get("user_level"),
        },
        "audit": report.get("audit"),
        "checkpoint_round": report.get("checkpoint_round"),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _user_level_line(user: dict[str, Any]) -> str:
    if not user:
        return "- user level: none (no user-level noise was added)"
    q = user.get("sample_rate")
    if q is not None and q < 1:
        scope = (
            f"amplified by sampling clients at rate {_fmt(q)}: it assumes secret Poisson "
            "sampling and bounds users of the released model, not a server that saw who took part"
        )
    else:
        scope = "no amplification claimed: the same figure bounds the server and model users"
    return (
        f"- user level (one client's whole data): epsilon {_fmt(user.get('epsilon'))}, delta "
        f"{_fmt(user.get('delta'))}, accountant {_fmt(user.get('accountant'))}, clip "
        f"{_fmt(user.get('clip_norm'))}, noise multiplier "
        f"{_fmt(user.get('effective_noise_multiplier'))}, t_min "
        f"{_fmt(user.get('min_survivors'))} ({scope})"
    )


def render_card(card: dict[str, Any]) -> str:
    """The model card as README.md."""
    acc = card["accuracy_on_unseen_users"]
    user = card["privacy"]["user_level"] or {}
    record = card["privacy"]["record_level"] or {}
    lines = [
        f"# {card['method']} personalised reward model",
        "",
        f"- backbone: `{card['backbone']}` ({card['mode']} mode, {card['head']} head)",
        f"- data: {_fmt(card['data'])}",
        f"- protocol {_fmt(card['protocol'])}, user types {', '.join(card['user_types'] or [])}",
        f"- rounds: {_fmt(card['rounds'])}; secure aggregation: {_fmt(card['secure_aggregation'])}",
        f"- accuracy on unseen users: overall {_fmt(acc.get('overall'))}, conflicting pairs "
        f"{_fmt(acc.get('conflicting'))}, agreeing {_fmt(acc.get('agreeing'))} "
        f"({_fmt(card['evaluation_pairs'])} pairs)",
        "",
        "## Privacy",
        "",
    ]
    if card.get("checkpoint_round") is not None:
        lines += [
            f"- unknown here: this is the server's checkpoint of round {card['checkpoint_round']}; "
            "the run's privacy facts are in its report.json and ledgers (run `fedvpa-secure "
            "audit` on the run folder), written when the run ends",
            "",
            _LOAD_LINE,
            "",
        ]
        return "\n".join(lines)
    lines.append(_user_level_line(user))
    audit = card.get("audit") or {}
    ledger_record = (audit.get("epsilon_by_unit") or {}).get("record/clients")
    if record and record.get("epsilon") is not None:
        lines.append(
            f"- record level (one preference pair of one client): epsilon "
            f"{_fmt(record.get('epsilon'))} (the largest over clients), delta "
            f"{_fmt(record.get('delta'))}, accountant {_fmt(record.get('accountant'))}, clip "
            f"{_fmt(record.get('max_grad_norm'))}, noise multiplier "
            f"{_fmt(record.get('noise_multiplier'))}"
        )
    elif ledger_record:
        lines.append(
            "- record level (one preference pair of one client), from "
            f"{len(ledger_record['actors'])} client ledgers: epsilon <= "
            f"{_fmt(ledger_record['max_epsilon'])}, delta {_fmt(ledger_record['delta'])}, "
            f"accountant {', '.join(ledger_record['accountants'])}"
        )
    else:
        lines.append("- record level: none (no DP-SGD round was recorded)")
    if audit:
        verdict = "passed" if audit.get("passed") else "FAILED"
        lines.append(f"- ledger audit ({audit.get('ledgers')} ledgers re-verified): {verdict}")
    else:
        lines.append("- ledger audit: no ledgers (the run recorded no privacy events)")
    lines += ["", _LOAD_LINE, ""]
    return "\n".join(lines)


_LOAD_LINE = (
    "Load it with `fedvpa_secure.RewardModel.from_pretrained(path)`; personalise with a "
    "user's own labelled pairs (`personalize`, computed locally) and score with `score`."
)
