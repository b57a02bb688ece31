"""Giving pairs to clients: training clients and unseen evaluation clients (METHOD.md §6).

Every client is one user of one type and holds only pairs labelled by that type. No pair is in
two clients, and evaluation clients never share a pair (nor, when the pool is split here, a
conversation opener) with training clients, so their accuracy measures personalisation of a
truly unseen user. For P3 and synthetic data a pair's type is decided when it is given to a
client: a pair goes to exactly one user of one type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvpa_secure.data.dialogue import first_human_turn
from fedvpa_secure.data.hh_rlhf import RawDataset, load_folder
from fedvpa_secure.data.protocols import (
    Candidate,
    ProtocolSpec,
    assign,
    get_protocol,
    make_candidates,
    normalise_type_mix,
)
from fedvpa_secure.data.source import SyntheticSource
from fedvpa_secure.data.split import split_pairs
from fedvpa_secure.data.synthetic import generate_synthetic
from fedvpa_secure.data.types import ClientData, FederatedData, RawPair
from fedvpa_secure.errors import ConfigError

RawInput = RawDataset | SyntheticSource | Sequence[RawPair] | str | Path
EVAL_FRACTION_MARGIN = 1.25  # the hash split is approximate: set aside a little more than asked
_STREAM_TRAIN, _STREAM_EVAL = 2, 3


@dataclass(frozen=True)
class _Side:
    """One side of the federation (training or evaluation) as requested."""

    name: str  # "train" or "eval"
    n_clients: int
    pairs_per_client: int
    type_counts: dict[str, int]


def build_federated_data(
    protocol: str,
    raw_pairs_or_source: RawInput | None,
    *,
    n_clients: int,
    pairs_per_client: int,
    n_eval_clients: int,
    type_mix: Mapping[str, float] | None = None,
    seed: int,
    eval_raw_pairs: RawDataset | Sequence[RawPair] | str | Path | None = None,
    eval_pairs_per_client: int | None = None,
    eval_fraction: float | None = None,
) -> FederatedData:
    """Build the training and unseen evaluation clients of one experiment.

    Args:
        protocol: "p1", "p2", "p3" or "synthetic".
        raw_pairs_or_source: loaded pairs (RawDataset or a sequence of RawPair), a folder path,
            or SYNTHETIC / None for the synthetic protocol.
        n_clients: training clients.
        pairs_per_client: pairs each training client holds.
        n_eval_clients: unseen evaluation clients (0 allowed).
        type_mix: share of clients per user type, e.g. {"helpful-first": 0.3,
            "harmless-first": 0.7}; default equal shares. Counts are rounded by largest
            remainder, separately for training and evaluation clients.
        seed: makes everything (split, client types, pair draws, display order) reproducible.
        eval_raw_pairs: pairs for the evaluation clients (the --eval-data folder). Training
            then uses every pair whose first Human turn does not occur in them.
        eval_pairs_per_client: pairs each evaluation client holds (default pairs_per_client).
        eval_fraction: without eval_raw_pairs, the share of conversation openers set aside for
            evaluation clients; default: what they need, plus a 25% margin.

    Raises:
        ConfigError: a bad argument, or not enough pairs of a type for the request (the message
            says how many there are and what to change).
    """
    spec = get_protocol(protocol)
    _check_positive(n_clients=n_clients, pairs_per_client=pairs_per_client)
    _check_positive(n_eval_clients=n_eval_clients, minimum=0)
    eval_ppc = pairs_per_client if eval_pairs_per_client is None else eval_pairs_per_client
    _check_positive(eval_pairs_per_client=eval_ppc)
    mix = normalise_type_mix(protocol, type_mix)
    train = _Side("train", n_clients, pairs_per_client, allocate_clients(n_clients, mix))
    evaluation = _Side("eval", n_eval_clients, eval_ppc, allocate_clients(n_eval_clients, mix))

    if spec.name == "synthetic":
        train_cands, eval_cands, origin = _synthetic_pools(
            raw_pairs_or_source, train, evaluation, seed
        )
    else:
        train_cands, eval_cands, origin = _hh_pools(
            spec, raw_pairs_or_source, eval_raw_pairs, train, evaluation, eval_fraction, seed
        )
    train_clients = _give_out(spec, train_cands, train, seed, _STREAM_TRAIN, origin)
    eval_clients = _give_out(spec, eval_cands, evaluation, seed, _STREAM_EVAL, origin)
    description = (
        f"protocol {spec.name} ({spec.summary}); data: {origin['data']}; "
        f"{n_clients} training clients {train.type_counts} x {pairs_per_client} pairs; "
        f"{n_eval_clients} eval clients {evaluation.type_counts} x {eval_ppc} pairs "
        f"({origin['eval']}); seed {seed}"
    )
    return FederatedData(
        protocol=spec.name,
        user_types=spec.user_types,
        train_clients=train_clients,
        eval_clients=eval_clients,
        description=description,
    )


def allocate_clients(n_clients: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Clients per type by largest remainder (ties to the earlier type): 10 at 30/70 is 3/7."""
    exact = {t: n_clients * share for t, share in mix.items()}
    counts = {t: int(np.floor(v)) for t, v in exact.items()}
    by_remainder = sorted(mix, key=lambda t: (-(exact[t] - counts[t]), list(mix).index(t)))
    for t in by_remainder[: n_clients - sum(counts.values())]:
        counts[t] += 1
    return counts


def _check_positive(minimum: int = 1, **values: int) -> None:
    for name, value in values.items():
        if type(value) is not int or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _needed(side: _Side) -> int:
    return side.n_clients * side.pairs_per_client


def _synthetic_pools(
    source: RawInput | None, train: _Side, evaluation: _Side, seed: int
) -> tuple[list[Candidate], list[Candidate], dict[str, str]]:
    if source is not None and not isinstance(source, SyntheticSource):
        raise ConfigError(
            "protocol 'synthetic' generates its own pairs; pass SYNTHETIC (or None) as the "
            "source, or choose p1, p2 or p3 for HH-RLHF data"
        )
    n_train, n_eval = _needed(train), _needed(evaluation)
    candidates = make_candidates("synthetic", generate_synthetic(n_train + n_eval, seed))
    # Stratify so training gets exactly half controversial pairs (evaluation the rest).
    controversial = [c for c in candidates if c.conflicting]
    agreeing = [c for c in candidates if not c.conflicting]
    n_train_controversial = n_train // 2
    n_train_agreeing = n_train - n_train_controversial
    train_cands = controversial[:n_train_controversial] + agreeing[:n_train_agreeing]
    eval_cands = controversial[n_train_controversial:] + agreeing[n_train_agreeing:]
    origin = {
        "data": f"synthetic two-persona set, {n_train + n_eval} generated pairs",
        "eval": "separate generated pairs",
    }
    return train_cands, eval_cands, origin


def _hh_pools(
    spec: ProtocolSpec,
    source: RawInput | None,
    eval_source: RawDataset | Sequence[RawPair] | str | Path | None,
    train: _Side,
    evaluation: _Side,
    eval_fraction: float | None,
    seed: int,
) -> tuple[list[Candidate], list[Candidate], dict[str, str]]:
    raw, data_description = _as_raw_pairs(source, spec.name)
    if eval_source is not None:
        eval_raw, eval_description = _as_raw_pairs(eval_source, spec.name)
        eval_ids = {p.pair_id for p in eval_raw}
        eval_openers = {first_human_turn(p.prompt) for p in eval_raw}
        kept = [
            p
            for p in raw
            if p.pair_id not in eval_ids and first_human_turn(p.prompt) not in eval_openers
        ]
        dropped = len(raw) - len(kept)
        how = f"from {eval_description}; {dropped} training pairs sharing an opener dropped"
        return (
            make_candidates(spec.name, kept),
            make_candidates(spec.name, eval_raw),
            {
                "data": data_description,
                "eval": how,
            },
        )
    if evaluation.n_clients == 0:
        return make_candidates(spec.name, raw), [], {"data": data_description, "eval": "none"}
    if eval_fraction is None:
        share = _needed(evaluation) / (_needed(train) + _needed(evaluation))
        eval_fraction = float(min(0.5, max(0.05, EVAL_FRACTION_MARGIN * share)))
    train_raw, eval_raw = split_pairs(raw, eval_fraction, seed)
    how = f"{eval_fraction:.0%} of conversation openers set aside by hash"
    return (
        make_candidates(spec.name, train_raw),
        make_candidates(spec.name, eval_raw),
        {
            "data": data_description,
            "eval": how,
        },
    )


def _as_raw_pairs(source: RawInput | None, protocol: str) -> tuple[Sequence[RawPair], str]:
    if source is None or isinstance(source, SyntheticSource):
        raise ConfigError(
            f"protocol {protocol!r} needs HH-RLHF pairs, but the source is synthetic; pass "
            "--data FOLDER (or set HH_RLHF_DIR), or use protocol 'synthetic'"
        )
    if isinstance(source, RawDataset):
        return source.pairs, source.description
    if isinstance(source, (str, Path)):
        data = load_folder(source)
        return data.pairs, data.description
    pairs = list(source)
    return pairs, f"{len(pairs)} given pairs"


def _give_out(
    spec: ProtocolSpec,
    candidates: list[Candidate],
    side: _Side,
    seed: int,
    stream: int,
    origin: Mapping[str, str],
) -> tuple[ClientData, ...]:
    """Deal candidates to the side's clients, each a user of one type, no pair twice."""
    rng = np.random.default_rng([seed, stream])
    client_types = [t for t, n in side.type_counts.items() for _ in range(n)]
    client_types = [client_types[int(i)] for i in rng.permutation(len(client_types))]
    pools = _pools_by_type(spec, candidates, side, origin)
    for pool in pools.values():
        pool[:] = [pool[int(i)] for i in rng.permutation(len(pool))]
    clients = []
    for index, user_type in enumerate(client_types):
        pool = pools[None if spec.shared_pool else user_type]
        chunk, pool[:] = pool[: side.pairs_per_client], pool[side.pairs_per_client :]
        pairs = tuple(assign(cand, user_type, rng) for cand in chunk)
        clients.append(ClientData(f"{side.name}-{index:04d}", user_type, pairs))
    return tuple(clients)


def _pools_by_type(
    spec: ProtocolSpec, candidates: list[Candidate], side: _Side, origin: Mapping[str, str]
) -> dict[str | None, list[Candidate]]:
    """Candidate pools keyed by owner type (None: one shared pool), checked for size."""
    where = "training" if side.name == "train" else "evaluation"
    hint = (
        "lower the number of clients or pairs per client, change type_mix, or load more data "
        "(a bigger folder, no per-subset cap"
        + (", or a larger eval_fraction / --eval-data)" if side.name == "eval" else ")")
    )
    if spec.shared_pool:
        need = _needed(side)
        if need > len(candidates):
            raise ConfigError(
                f"{spec.name}: {side.n_clients} {where} clients x {side.pairs_per_client} pairs "
                f"need {need} pairs, but only {len(candidates)} are available for {where} "
                f"({origin['eval']}); {hint}"
            )
        return {None: list(candidates)}
    pools: dict[str | None, list[Candidate]] = {t: [] for t in spec.user_types}
    for cand in candidates:
        pools[cand.owner].append(cand)
    for user_type, n in side.type_counts.items():
        need = n * side.pairs_per_client
        if need > len(pools[user_type]):
            raise ConfigError(
                f"{spec.name}: {n} {where} clients of type {user_type!r} x "
                f"{side.pairs_per_client} pairs need {need} pairs, but only "
                f"{len(pools[user_type])} {user_type!r} pairs are available for {where} "
                f"({origin['eval']}); {hint}"
            )
    return pools
