"""``fedvpa-secure experiment``: the in-process federated experiment (HH-RLHF or synthetic)."""

from __future__ import annotations

import argparse
import sys

from fedvpa_secure.config import (
    HEADS,
    METHODS,
    POSTERIORS,
    PROTOCOL_DEFAULTS,
    PROTOCOLS,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ObjectiveConfig,
    TrainConfig,
    method_spec,
    protocol_defaults,
)
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.dp_config import DPConfig, UserDPConfig

DEFAULTS = ExperimentConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="run an in-process federated experiment and write OUT/report.json",
        description="Train one method on one data protocol with an in-process federation, "
        "evaluate on unseen users, and write OUT/report.json with PNG plots.",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="HH-RLHF folder, 'synthetic', or 'hub' (default: $HH_RLHF_DIR, "
        "else the datasets hub, else synthetic)",
    )
    g.add_argument("--eval-data", help="folder of the same layout whose users are evaluated")
    g.add_argument(
        "--protocol",
        choices=("auto", *PROTOCOLS),
        default="auto",
        help="auto: p3 on HH-RLHF data, synthetic otherwise",
    )
    # flags left at None take the protocol's measured defaults (config.PROTOCOL_DEFAULTS),
    # else the dataclass defaults
    _protocol_flag(g, "--clients", int, "data", "n_clients")
    _protocol_flag(g, "--eval-clients", int, "data", "n_eval_clients")
    _protocol_flag(g, "--pairs-per-client", int, "data", "pairs_per_client")
    _protocol_flag(g, "--eval-pairs-per-client", int, "data", "eval_pairs_per_client")
    g.add_argument("--type-mix", default=None, help="fractions per user type, e.g. 0.3,0.7")
    g.add_argument(
        "--max-pairs-per-subset",
        type=int,
        default=None,
        help="read at most N pairs per subset (fast trials)",
    )
    g = p.add_argument_group("method and model")
    g.add_argument("--method", choices=tuple(METHODS), default=DEFAULTS.method)
    g.add_argument(
        "--backbone",
        default=DEFAULTS.model.backbone,
        help="all-MiniLM-L6-v2, tiny-causal, or a local Hugging Face folder",
    )
    g.add_argument("--mode", choices=("frozen", "lora"), default=DEFAULTS.model.mode)
    g.add_argument("--max-length", type=int, default=DEFAULTS.model.max_length)
    g.add_argument("--latent-dim", type=int, default=DEFAULTS.model.latent_dim)
    g.add_argument("--components", type=int, default=DEFAULTS.model.n_components)
    g.add_argument(
        "--posterior",
        choices=POSTERIORS,
        default=None,
        help="how z is inferred from the context: the attention encoder, or a balanced E-step "
        "on the decoder's own likelihood of the context labels (methods with prototypes, no "
        "DP); " + _default_help("model", "posterior"),
    )
    g.add_argument(
        "--head",
        choices=HEADS,
        default=None,
        help="reward head: mlp, or linear (one linear reward per z); "
        + _default_help("model", "head"),
    )
    g.add_argument(
        "--domain-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="route each pair by its prompt's domain (a router trained on the training pairs' "
        "source tags); " + _default_help("model", "domain_gate"),
    )
    _protocol_flag(g, "--beta", float, "objective", "beta")
    _protocol_flag(g, "--pull-weight", float, "objective", "pull_weight")
    g = p.add_argument_group("federation")
    g.add_argument("--rounds", type=int, default=DEFAULTS.train.rounds)
    g.add_argument(
        "--clients-per-round",
        type=int,
        default=DEFAULTS.train.clients_per_round,
        help="0 = all training clients",
    )
    g.add_argument("--local-steps", type=int, default=DEFAULTS.train.local_steps)
    _protocol_flag(g, "--context-size", int, "train", "context_size")
    _protocol_flag(g, "--query-size", int, "train", "query_size")
    g.add_argument(
        "--eval-context-size",
        type=int,
        default=None,
        help="context pairs an unseen user is personalised from (0: --context-size); every "
        "other pair of the user is scored, cross-fitted; "
        + _default_help("train", "eval_context_size"),
    )
    g.add_argument(
        "--server-optimizer",
        choices=("avg", "adam"),
        default=None,
        help="FedAvg or FedAdam on the mean delta; " + _default_help("train", "server_optimizer"),
    )
    _protocol_flag(g, "--server-learning-rate", float, "train", "server_learning_rate")
    g.add_argument("--episodes-per-step", type=int, default=DEFAULTS.train.episodes_per_step)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("privacy (PRIVACY.md; each guarantee is reported with its unit)")
    g.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="record-level DP-SGD on every client: target epsilon per client (calibrates the "
        "noise), or the budget when --noise-multiplier is given",
    )
    g.add_argument("--dp-delta", type=float, default=1e-5, help="delta of both guarantees")
    g.add_argument("--noise-multiplier", type=float, default=None, help="DP-SGD noise multiplier z")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="per-episode clip C")
    g.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    g.add_argument(
        "--prior-noise-multiplier",
        type=float,
        default=None,
        help="noise multiplier of the prior statistics' Gaussian release (default: calibrated "
        "so the prior releases of all rounds spend 20%% of the budget)",
    )
    g.add_argument(
        "--secure-agg", action="store_true", help="sum updates with the secure-aggregation protocol"
    )
    g.add_argument(
        "--user-dp-epsilon",
        type=float,
        default=None,
        help="user-level distributed DP (implies --secure-agg): target epsilon of the server",
    )
    g.add_argument("--user-dp-clip", type=float, default=1.0, help="whole-update clip norm S")
    g.add_argument(
        "--user-dp-min-survivors",
        type=int,
        default=3,
        help="t_min: noise is calibrated to this many survivors; fewer aborts the round",
    )
    g.add_argument(
        "--user-dp-noise", choices=("discrete_gaussian", "skellam"), default="discrete_gaussian"
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder for report.json and plots")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--cache-dir", default=DEFAULTS.cache_dir, help="frozen-mode embedding cache")
    p.set_defaults(func=run)


def _type_mix(text: str | None) -> tuple[float, ...]:
    if text is None:
        return DEFAULTS.data.type_mix
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as err:
        raise ConfigError(
            f"--type-mix={text!r} is invalid: expected fractions like 0.3,0.7"
        ) from err


def _protocol_flag(g, flag: str, kind: type, group: str, name: str) -> None:
    """A numeric flag whose default (None) is resolved per protocol by config_from_args."""
    g.add_argument(flag, type=kind, default=None, help=_default_help(group, name))


def _default_help(group: str, name: str) -> str:
    """'default: X (p3: Y)' for a flag whose default depends on the protocol."""
    base = getattr(getattr(DEFAULTS, group), name)
    per = [f"{p}: {d[group][name]}" for p, d in PROTOCOL_DEFAULTS.items() if name in d[group]]
    return f"default {base}" + (f" ({', '.join(per)})" if per else "")


def data_kwargs(args: argparse.Namespace) -> dict:
    """DataConfig fields given on the command line; the rest come from the protocol's defaults
    once the protocol is resolved (load_federated_data)."""
    given = {
        "eval_data_dir": args.eval_data,
        "n_clients": args.clients,
        "n_eval_clients": args.eval_clients,
        "pairs_per_client": args.pairs_per_client,
        "eval_pairs_per_client": args.eval_pairs_per_client,
        "type_mix": _type_mix(args.type_mix),
        "max_pairs_per_subset": args.max_pairs_per_subset,
    }
    keep = ("eval_data_dir", "max_pairs_per_subset")  # None means "none" for these two
    return {k: v for k, v in given.items() if v is not None or k in keep}


def dp_config_from_args(args: argparse.Namespace) -> DPConfig | None:
    """Record-level DP settings, or None when neither --dp-epsilon nor --noise-multiplier."""
    eps = getattr(args, "dp_epsilon", None)
    z = getattr(args, "noise_multiplier", None)
    if eps is None and z is None:
        return None
    if z is not None and eps is None:
        raise ConfigError(
            "--noise-multiplier needs a budget: add --dp-epsilon (the most a client may spend)"
        )
    return DPConfig(
        target_epsilon=None if z is not None else eps,
        noise_multiplier=z,
        epsilon_max=eps if z is not None else None,
        delta=args.dp_delta,
        max_grad_norm=args.max_grad_norm,
        accountant=args.accountant,
        prior_noise_multiplier=args.prior_noise_multiplier,
    )


def aggregator_from_args(args: argparse.Namespace, cfg: ExperimentConfig, n_clients: int):
    """plain_sum, or a SecureAggregator (with user-level DP when --user-dp-epsilon)."""
    from fedvpa_secure.train.aggregation import plain_sum

    user_eps = getattr(args, "user_dp_epsilon", None)
    if not getattr(args, "secure_agg", False) and user_eps is None:
        return plain_sum
    from fedvpa_secure.train.secure_aggregation import SecureAggregator

    if user_eps is None:
        return SecureAggregator()
    per_round = cfg.train.clients_per_round or n_clients
    return SecureAggregator(
        user_dp=UserDPConfig(
            target_epsilon=user_eps,
            delta=args.dp_delta,
            clip_norm=args.user_dp_clip,
            min_survivors=args.user_dp_min_survivors,
            noise=args.user_dp_noise,
            accountant=args.accountant,
        ),
        run_dir=args.out,
        rounds=cfg.train.rounds,
        sample_rate=min(1.0, per_round / n_clients),
    )


def _resolved(args: argparse.Namespace, protocol: str, group: str, *names: str) -> dict:
    """Config fields of one group (each flag's dest is the field name): the flag where given,
    else the protocol's default, else the dataclass default."""
    defaults = protocol_defaults(protocol, group)
    out = {}
    for name in names:
        value = getattr(args, name)
        if value is None:
            value = defaults.get(name, getattr(getattr(DEFAULTS, group), name))
        out[name] = value
    return out


def config_from_args(args: argparse.Namespace, data_cfg: DataConfig) -> ExperimentConfig:
    protocol = data_cfg.protocol
    dp = dp_config_from_args(args)
    model = _resolved(args, protocol, "model", "head", "domain_gate", "posterior")
    if args.posterior is None and (not method_spec(args.method).has_prototypes or dp is not None):
        # the protocol's likelihood default needs prototypes and no DP; an explicit
        # --posterior is left to ExperimentConfig's check, which says why it cannot run
        model["posterior"] = "encoder"
    return ExperimentConfig(
        dp=dp,
        method=args.method,
        device=args.device,
        cache_dir=args.cache_dir,
        model=ModelConfig(
            backbone=args.backbone,
            mode=args.mode,
            max_length=args.max_length,
            latent_dim=args.latent_dim,
            n_components=args.components,
            **model,
        ),
        objective=ObjectiveConfig(**_resolved(args, protocol, "objective", "beta", "pull_weight")),
        train=TrainConfig(
            rounds=args.rounds,
            clients_per_round=args.clients_per_round,
            local_steps=args.local_steps,
            episodes_per_step=args.episodes_per_step,
            seed=args.seed,
            **_resolved(
                args,
                protocol,
                "train",
                "context_size",
                "query_size",
                "eval_context_size",
                "server_optimizer",
                "server_learning_rate",
            ),
        ),
        data=data_cfg,
    )


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.train.data_setup import load_federated_data
    from fedvpa_secure.train.experiment import run_experiment

    data, data_cfg = load_federated_data(args.data, args.protocol, data_kwargs(args), args.seed)
    cfg = config_from_args(args, data_cfg)
    protocol = data_cfg.protocol
    print(f"data: {data.description}", file=sys.stderr)
    print(
        f"method {cfg.method}, protocol {protocol}, {len(data.train_clients)} training clients, "
        f"{len(data.eval_clients)} unseen evaluation clients, {cfg.train.rounds} rounds",
        file=sys.stderr,
    )

    def on_round(r) -> None:
        print(
            f"round {r.round:3d}/{cfg.train.rounds}  loss {r.loss:.4f}  "
            f"eval acc {r.eval_accuracy:.3f}  conflicting {r.eval_conflicting:.3f}  "
            f"({r.seconds:.1f}s)",
            file=sys.stderr,
            flush=True,
        )

    aggregate = aggregator_from_args(args, cfg, len(data.train_clients))
    report = run_experiment(cfg, data, args.out, aggregate=aggregate, on_round=on_round)
    acc = report["accuracy"]
    print(
        f"accuracy overall {acc['overall']:.3f}, conflicting {acc['conflicting']:.3f}; "
        f"report: {args.out}/report.json"
    )
    for info in (report.get("privacy") or {}).values():
        if isinstance(info, dict):
            print(
                f"privacy ({info['unit']}): epsilon {info['epsilon']:.3f} at delta "
                f"{info['delta']:g} ({info['accountant']})"
            )
    return 0
