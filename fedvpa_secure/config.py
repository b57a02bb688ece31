"""Frozen, validated configuration for the learner and the experiment.

Every dataclass checks itself in ``__post_init__`` and raises :class:`ConfigError` naming the
field, the value and the allowed range, so a bad flag fails before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.dp_config import DPConfig, resolve_prior_noise

PROTOCOLS = ("p1", "p2", "p3", "synthetic")
MODES = ("frozen", "lora")
POSTERIORS = ("encoder", "likelihood")
HEADS = ("mlp", "linear")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BACKBONE = "all-MiniLM-L6-v2"


def _check(cond: bool, field_name: str, value: object, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}={value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class MethodSpec:
    """Which parts of the model one method uses (METHOD.md section 5: one switch each)."""

    name: str
    latent: bool  # infer a user latent z from a context of that user's pairs
    mixture_prior: bool  # federated Gumbel-Softmax mixture prior instead of N(0, I)
    ortho_pull: bool  # prototype orthogonality loss + pull of z towards its component
    federated: bool  # FedAvg over clients (False: pooled, centralised training)
    oracle: bool = False  # told each user's true type (the ceiling of personalisation)

    @property
    def has_prototypes(self) -> bool:
        """Prototypes exist (mixture prior or ortho/pull); the likelihood posterior needs them."""
        return self.latent and (self.mixture_prior or self.ortho_pull)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "monolithic", latent=False, mixture_prior=False, ortho_pull=False, federated=True
        ),
        MethodSpec("fedvpl", latent=True, mixture_prior=False, ortho_pull=False, federated=True),
        MethodSpec(
            "fedvpl-ortho", latent=True, mixture_prior=False, ortho_pull=True, federated=True
        ),
        MethodSpec("fedvpl-gb", latent=True, mixture_prior=True, ortho_pull=False, federated=True),
        MethodSpec("fedvpa-gp", latent=True, mixture_prior=True, ortho_pull=True, federated=True),
        MethodSpec(
            "central-vpl", latent=True, mixture_prior=False, ortho_pull=False, federated=False
        ),
        MethodSpec(
            "oracle",
            latent=False,
            mixture_prior=False,
            ortho_pull=False,
            federated=True,
            oracle=True,
        ),
    )
}


def method_spec(name: str) -> MethodSpec:
    """Look up a method by name, with an error that lists the choices."""
    if name not in METHODS:
        raise ConfigError(f"method={name!r} is unknown: choose one of {', '.join(METHODS)}")
    return METHODS[name]


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, latent and head sizes (METHOD.md sections 2-4)."""

    backbone: str = DEFAULT_BACKBONE
    mode: str = "frozen"
    max_length: int = 256
    latent_dim: int = 32
    n_components: int = 2
    hidden_dim: int = 128
    attention_heads: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    logvar_min: float = -8.0
    logvar_max: float = 4.0
    # How a user's z is inferred from its context pairs. "encoder": the amortised attention
    # encoder q(z | C) of METHOD.md section 2. "likelihood": a balanced E-step instead of an
    # encoder (PreferenceModel.context_responsibilities): responsibilities of the prototypes
    # under the DECODER's own Bradley-Terry likelihood of the context labels, z = r @ P. It is
    # computed locally from the user's own pairs; the server only sees summed statistics.
    # Only for methods with prototypes (mixture prior or ortho/pull).
    posterior: str = "encoder"
    likelihood_temperature: float = 1.0  # divides the E-step logits (1: the plain E-step)
    # The reward head on the (gated) embeddings. "mlp": r = MLP([f(e), z]) + z^T W f(e) with f a
    # two-layer MLP. "linear": r = w . e + z^T V e, one linear Bradley-Terry reward per point
    # of z-space, the form of benchmarks/feature_probe.py's logistic probes, which on frozen
    # features generalises where the MLP memorises a client's pairs.
    head: str = "mlp"
    # Route each pair by its prompt's domain: e -> [e (1 - g), e g], g = sigmoid(u . mean of the
    # pair's two embeddings), so the reward can differ between harmful and ordinary requests
    # (one direction in embedding space cannot say "refuse this, comply with that"). u is trained
    # only on the training pairs' public source tag (Pair.domain, ObjectiveConfig.domain_weight);
    # a pair is routed from its text alone, so evaluation never reads a tag.
    domain_gate: bool = False

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "mode", self.mode, f"one of {MODES}")
        _check(self.posterior in POSTERIORS, "posterior", self.posterior, f"one of {POSTERIORS}")
        _check(self.head in HEADS, "head", self.head, f"one of {HEADS}")
        _check(
            self.likelihood_temperature > 0,
            "likelihood_temperature",
            self.likelihood_temperature,
            "> 0",
        )
        _check(bool(self.backbone), "backbone", self.backbone, "a name or a local path")
        _check(16 <= self.max_length <= 4096, "max_length", self.max_length, "16..4096")
        _check(1 <= self.latent_dim <= 1024, "latent_dim", self.latent_dim, "1..1024")
        _check(
            2 <= self.n_components <= self.latent_dim,
            "n_components",
            self.n_components,
            f"2..latent_dim ({self.latent_dim}): prototypes must fit orthogonally",
        )
        _check(self.hidden_dim >= 4, "hidden_dim", self.hidden_dim, ">= 4")
        _check(
            self.attention_heads >= 1 and self.hidden_dim % self.attention_heads == 0,
            "attention_heads",
            self.attention_heads,
            f"a divisor of hidden_dim ({self.hidden_dim})",
        )
        _check(self.lora_r >= 1, "lora_r", self.lora_r, ">= 1")
        _check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", self.lora_dropout, "[0, 1)")
        _check(self.logvar_min < self.logvar_max, "logvar_min", self.logvar_min, "< logvar_max")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Loss weights and prior settings (METHOD.md sections 3-4, paper defaults)."""

    # Measured on synthetic (10 clients, 40 rounds): beta 0.05 / lambda 1 / floor 0.01 collapse
    # every user onto one prototype (0.48 on controversial pairs); beta 0.01 / lambda 0.1 /
    # floor 1.0 reach 0.99 by round 21.
    beta: float = 0.01  # KL weight
    pull_weight: float = 0.1  # lambda: ||z - P_c*||^2 / d
    ortho_weight: float = 0.1  # gamma: ||P P^T - s^2 I||_F^2
    prior_scale: float = 5.0  # s: prototype norm
    tau_start: float = 1.0
    tau_end: float = 0.1
    # weight of the domain gate's cross-entropy on the query pairs' source tags
    # (ModelConfig.domain_gate); the gate's only training signal, detached from the reward
    domain_weight: float = 1.0
    kl_samples: int = 4  # Monte Carlo samples for KL against the mixture
    # s_k^2 floor when rebuilt from sums: a tight cluster must not shrink its component so far
    # that the KL locks every user in (measured: 0.1 and below -> collapse)
    variance_floor: float = 1.0
    mu_clip: float = 20.0  # ||mu_e|| clip before it enters the prior statistics
    # beta and lambda ramp up linearly over this fraction of the rounds (KL annealing, Bowman et
    # al. 2016): with full weights from round 1 every user's z is pulled to the same prototype
    # before the encoder has learnt to tell users apart (measured: collapse, 0.46 on synthetic).
    warmup_fraction: float = 0.3
    # Mixture-prior methods train against N(0, I) (FedVPL) for this fraction of the rounds
    # before the mixture and the pull switch on. The encoder first has to separate users; a
    # mixture from round 1 lets every user fall into the component nearest the shared offset of
    # the untrained encoder (measured: pi -> (1, 0), all users at one prototype). The server
    # still rebuilds pi and s^2 from the sums every round.
    prior_warmup_fraction: float = 0.3
    use_mixture: bool = True  # set per round by at_round(); False during the prior warm-up

    def __post_init__(self) -> None:
        for name in ("beta", "pull_weight", "ortho_weight", "domain_weight"):
            value = getattr(self, name)
            _check(value >= 0 and math.isfinite(value), name, value, "a finite number >= 0")
        _check(self.prior_scale > 0, "prior_scale", self.prior_scale, "> 0")
        _check(
            0 < self.tau_end <= self.tau_start, "tau_end", self.tau_end, "0 < tau_end <= tau_start"
        )
        _check(self.kl_samples >= 1, "kl_samples", self.kl_samples, ">= 1")
        _check(self.variance_floor > 0, "variance_floor", self.variance_floor, "> 0")
        _check(self.mu_clip > 0, "mu_clip", self.mu_clip, "> 0")
        _check(0 <= self.warmup_fraction <= 1, "warmup_fraction", self.warmup_fraction, "[0, 1]")
        _check(
            0 <= self.prior_warmup_fraction < 1,
            "prior_warmup_fraction",
            self.prior_warmup_fraction,
            "[0, 1)",
        )

    def at_round(self, round_index: int, rounds: int) -> ObjectiveConfig:
        """The weights in force in round ``round_index`` (0-based) of ``rounds``."""
        warm = self.warmup_fraction * rounds
        ramp = 1.0 if warm <= 0 else min(1.0, (round_index + 1) / warm)
        start = int(self.prior_warmup_fraction * rounds)
        pull_warm = self.warmup_fraction * max(rounds - start, 1)
        if round_index < start:
            pull_ramp = 0.0
        else:
            pull_ramp = 1.0 if pull_warm <= 0 else min(1.0, (round_index - start + 1) / pull_warm)
        return replace(
            self,
            beta=self.beta * ramp,
            pull_weight=self.pull_weight * pull_ramp,
            use_mixture=round_index >= start,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Federation and local optimisation settings."""

    rounds: int = 40
    clients_per_round: int = 0  # 0: every training client each round
    local_steps: int = 5
    episodes_per_step: int = 8
    context_size: int = 16  # K_ctx labelled pairs of one user, disjoint from the query pairs
    query_size: int = 8
    # K_ctx of an UNSEEN user at evaluation (0: context_size). The likelihood posterior has no
    # encoder trained on one context length, so a user may bring more pairs than a training
    # episode holds; every pair is still scored with a disjoint context (cross-fitting).
    eval_context_size: int = 0
    learning_rate: float = 0.1
    lora_learning_rate: float = 5e-4
    weight_decay: float = 0.0
    local_optimizer: str = "sgd"
    server_optimizer: str = (
        "avg"  # avg: FedAvg; adam: FedAdam (Reddi et al. 2021) on the mean delta
    )
    server_learning_rate: float = 1.0
    # With server_optimizer="adam": plain FedAvg (server lr 1) for this fraction of the rounds
    # before FedAdam takes over. Measured: FedAdam from round 1 lets the decoder learn the
    # monolithic reward before the encoder separates the users (synthetic: 1.00 -> ~0.50 on
    # controversial pairs), while FedAvg alone trains too slowly on HH-RLHF (oracle gain +0.01).
    server_adam_start_fraction: float = 0.0
    seed: int = 0

    @property
    def evaluation_context_size(self) -> int:
        """K_ctx an unseen user is personalised from."""
        return self.eval_context_size or self.context_size

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "rounds", self.rounds, ">= 1")
        _check(self.clients_per_round >= 0, "clients_per_round", self.clients_per_round, ">= 0")
        _check(self.local_steps >= 1, "local_steps", self.local_steps, ">= 1")
        _check(self.episodes_per_step >= 1, "episodes_per_step", self.episodes_per_step, ">= 1")
        _check(1 <= self.context_size <= 512, "context_size", self.context_size, "1..512")
        _check(1 <= self.query_size <= 512, "query_size", self.query_size, "1..512")
        _check(
            0 <= self.eval_context_size <= 512,
            "eval_context_size",
            self.eval_context_size,
            "0..512 (0: context_size)",
        )
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(self.lora_learning_rate > 0, "lora_learning_rate", self.lora_learning_rate, "> 0")
        _check(
            self.local_optimizer in ("adam", "sgd"),
            "local_optimizer",
            self.local_optimizer,
            "adam or sgd",
        )
        _check(
            self.server_optimizer in ("avg", "adam"),
            "server_optimizer",
            self.server_optimizer,
            "avg or adam",
        )
        _check(
            self.server_learning_rate > 0, "server_learning_rate", self.server_learning_rate, "> 0"
        )
        _check(
            0 <= self.server_adam_start_fraction < 1,
            "server_adam_start_fraction",
            self.server_adam_start_fraction,
            "[0, 1)",
        )


@dataclass(frozen=True)
class DataConfig:
    """Which data, which protocol, how it is split into users."""

    protocol: str = "synthetic"
    data_dir: str | None = None
    eval_data_dir: str | None = None
    n_clients: int = 10
    n_eval_clients: int = 10
    pairs_per_client: int = 64
    eval_pairs_per_client: int = 64
    type_mix: tuple[float, ...] = (0.5, 0.5)  # fraction of users of each type, in sorted type order
    max_pairs_per_subset: int | None = None

    def __post_init__(self) -> None:
        _check(self.protocol in PROTOCOLS, "protocol", self.protocol, f"one of {PROTOCOLS}")
        _check(self.n_clients >= 1, "n_clients", self.n_clients, ">= 1")
        _check(self.n_eval_clients >= 1, "n_eval_clients", self.n_eval_clients, ">= 1")
        _check(self.pairs_per_client >= 2, "pairs_per_client", self.pairs_per_client, ">= 2")
        _check(
            self.eval_pairs_per_client >= 2,
            "eval_pairs_per_client",
            self.eval_pairs_per_client,
            ">= 2",
        )
        _check(
            len(self.type_mix) >= 2
            and all(f >= 0 for f in self.type_mix)
            and abs(sum(self.type_mix) - 1) < 1e-6,
            "type_mix",
            self.type_mix,
            "non-negative fractions, one per user type, summing to 1",
        )


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; serialised into the report."""

    method: str = "fedvpa-gp"
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache_dir: str = ".cache/embeddings"
    dp: DPConfig | None = None  # record-level DP-SGD on every client (PRIVACY.md section 1)

    def __post_init__(self) -> None:
        spec = method_spec(self.method)
        _check(
            self.model.posterior == "encoder" or spec.has_prototypes,
            "model.posterior",
            self.model.posterior,
            f"'encoder' for method {self.method!r} (the likelihood posterior needs prototypes)",
        )
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}")
        if self.dp is not None and self.model.posterior != "encoder":
            raise ConfigError(
                "model.posterior='likelihood' does not run under record-level DP-SGD yet: its "
                "prototype-conditioned E-step and its prior/ll release are not part of the "
                "clipped, noised mechanism; use posterior 'encoder' with --dp-epsilon / "
                "--noise-multiplier, or drop DP for this experiment"
            )
        if self.dp is not None and self.dp.prior_noise_multiplier is None:
            # the prior's share of the budget depends on the rounds: fix it once, here, so every
            # client, the ledger and the report use the same multiplier
            object.__setattr__(self, "dp", resolve_prior_noise(self.dp, self.train.rounds))

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    def to_dict(self) -> dict[str, Any]:
        return _asdict(self)


# The settings under which FedVPA-GP personalises on HH-RLHF with the frozen backbone (README,
# "What to expect": 3 seeds, unseen users of a held-out folder). `experiment` applies them where a
# flag is not given; the synthetic protocol keeps the dataclass defaults. Found on p3: a linear
# head with the domain gate generalises where the MLP memorises a client's pairs; the E-step
# needs long contexts to tell the types apart (unseen users with 64 / 128 / 256 context pairs:
# 36% / 47% / 70% of the oracle's gain); FedAdam at 0.03 moves a linear reward far enough in 40
# rounds (0.003: the oracle gains nothing); no KL or pull on the discrete posterior. p1 and p2
# share the recipe, with client counts and sizes that fit the pairs of each type in
# ../shared/data/hh-rlhf (its 70% training split holds 1530 harmless-type pairs for p1 and 959
# for p2; the evaluation split 684 and 437), so their unseen users have shorter contexts.
def _hh_defaults(
    n_clients: int,
    pairs_per_client: int,
    n_eval_clients: int,
    eval_pairs_per_client: int,
    context_size: int,
    eval_context_size: int,
) -> dict[str, dict[str, Any]]:
    """One HH protocol's defaults: the shared recipe with its own sizes and context lengths."""
    return {
        "data": {
            "n_clients": n_clients,
            "pairs_per_client": pairs_per_client,
            "n_eval_clients": n_eval_clients,
            "eval_pairs_per_client": eval_pairs_per_client,
        },
        "model": {"head": "linear", "domain_gate": True, "posterior": "likelihood"},
        "objective": {"beta": 0.0, "pull_weight": 0.0},
        "train": {
            "context_size": context_size,
            "query_size": 32,
            "eval_context_size": eval_context_size,
            "server_optimizer": "adam",
            "server_learning_rate": 0.03,
        },
    }


PROTOCOL_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "p1": _hh_defaults(10, 256, 8, 160, 128, 128),
    "p2": _hh_defaults(10, 180, 4, 200, 128, 160),
    "p3": _hh_defaults(20, 256, 8, 320, 128, 256),
}


def protocol_defaults(protocol: str, group: str) -> dict[str, Any]:
    """The measured defaults of one config group for a protocol ({} where there are none)."""
    return dict(PROTOCOL_DEFAULTS.get(protocol, {}).get(group, {}))


def _asdict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _asdict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_asdict(v) for v in obj]
    return obj


__all__ = [
    "DEFAULT_BACKBONE",
    "METHODS",
    "DataConfig",
    "ExperimentConfig",
    "MethodSpec",
    "ModelConfig",
    "ObjectiveConfig",
    "TrainConfig",
    "method_spec",
    "protocol_defaults",
    "replace",
]
