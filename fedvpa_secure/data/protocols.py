"""Data protocols: which user types exist and how each type labels each pair (METHOD.md §6).

A protocol turns parsed pairs into :class:`Candidate` s: a pair with the labels its user types
give and, for P1/P2, the one type whose users may hold it. Turning a candidate into the
:class:`Pair` one user sees (random display order) is :func:`assign`; the partitioner decides
which user (and, for P3 and synthetic, which type) gets each candidate.

- ``p1``: type = source subset family, original labels, no conflict (as in the paper).
- ``p2``: type = relabeled-dpl ``objective``; conflicting = the relabel disagrees with the
  original HH label (where a monolithic model must fail).
- ``p3``: two types over one HH pool; "helpful-first" reverses harmless-base labels, so every
  harmless-base pair is conflicting by construction and both labels are known.
- ``synthetic``: the generated two-persona set (:mod:`fedvpa_secure.data.synthetic`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedvpa_secure.data import synthetic
from fedvpa_secure.data.hh_rlhf import HARMLESS_SUBSETS, HELPFUL_SUBSETS, RELABELED_SUBSET
from fedvpa_secure.data.types import Pair, RawPair
from fedvpa_secure.errors import ConfigError, DataError

HELPFUL = "helpful"
HARMLESS = "harmless"
HELPFUL_FIRST = "helpful-first"
HARMLESS_FIRST = "harmless-first"
CHOSEN, REJECTED = 0, 1  # a candidate's labels index (raw.chosen, raw.rejected)


@dataclass(frozen=True)
class Candidate:
    """A parsed pair with the labels the protocol's user types give it.

    ``labels`` maps each type whose label is known to 0 (prefers ``raw.chosen``) or 1 (prefers
    ``raw.rejected``). ``owner`` is the only type that may hold the pair (P1, P2: the other
    type's label is unknown), or None when any type may (P3, synthetic).
    """

    raw: RawPair
    labels: Mapping[str, int]
    owner: str | None
    conflicting: bool


@dataclass(frozen=True)
class ProtocolSpec:
    """A protocol's user types and its rule for turning parsed pairs into candidates."""

    name: str
    user_types: tuple[str, ...]  # sorted
    make_candidates: Callable[[Sequence[RawPair]], list[Candidate]]
    summary: str

    @property
    def shared_pool(self) -> bool:
        """True when every type may hold every pair (the type is assigned per pair)."""
        return self.name in ("p3", "synthetic")


def _p1(raw_pairs: Sequence[RawPair]) -> list[Candidate]:
    family = dict.fromkeys(HELPFUL_SUBSETS, HELPFUL) | dict.fromkeys(HARMLESS_SUBSETS, HARMLESS)
    out = []
    for raw in raw_pairs:
        owner = family.get(raw.subset)
        if owner is not None:
            out.append(Candidate(raw, {owner: CHOSEN}, owner, conflicting=False))
    return out


def _p2(raw_pairs: Sequence[RawPair]) -> list[Candidate]:
    out = []
    for raw in raw_pairs:
        if raw.subset != RELABELED_SUBSET and "objective" not in raw.extra:
            continue
        objective = raw.extra.get("objective")
        if objective not in (HELPFUL, HARMLESS):
            raise DataError(
                f"{raw.source}: p2 needs relabeled-dpl rows with objective 'helpful' or "
                f"'harmless', got {objective!r}; fix the row or use another protocol"
            )
        # chosen is responses[label] already, so the own type's label is CHOSEN.
        conflicting = raw.extra.get("label") != raw.extra.get("original_label")
        out.append(Candidate(raw, {objective: CHOSEN}, objective, conflicting))
    return out


def _p3(raw_pairs: Sequence[RawPair]) -> list[Candidate]:
    out = []
    for raw in raw_pairs:
        if raw.subset in HELPFUL_SUBSETS:
            labels = {HARMLESS_FIRST: CHOSEN, HELPFUL_FIRST: CHOSEN}
            out.append(Candidate(raw, labels, None, conflicting=False))
        elif raw.subset in HARMLESS_SUBSETS:
            # helpful-first prefers the more compliant answer: the one HH annotators rejected.
            labels = {HARMLESS_FIRST: CHOSEN, HELPFUL_FIRST: REJECTED}
            out.append(Candidate(raw, labels, None, conflicting=True))
    return out


def _synthetic(raw_pairs: Sequence[RawPair]) -> list[Candidate]:
    out = []
    for raw in raw_pairs:
        if raw.subset != synthetic.SUBSET:
            continue
        controversial = bool(raw.extra.get("controversial"))
        labels = {synthetic.CAT_LOVER: CHOSEN, synthetic.DOG_LOVER: int(controversial)}
        out.append(Candidate(raw, labels, None, conflicting=controversial))
    return out


PROTOCOLS: Mapping[str, ProtocolSpec] = {
    "p1": ProtocolSpec("p1", (HARMLESS, HELPFUL), _p1, "type = HH subset family, original labels"),
    "p2": ProtocolSpec(
        "p2", (HARMLESS, HELPFUL), _p2, "type = relabeled-dpl objective, relabeled labels"
    ),
    "p3": ProtocolSpec(
        "p3",
        (HARMLESS_FIRST, HELPFUL_FIRST),
        _p3,
        "helpful-first reverses harmless-base labels; harmless-first keeps them",
    ),
    "synthetic": ProtocolSpec(
        "synthetic", synthetic.PERSONAS, _synthetic, "generated cat-lover / dog-lover pairs"
    ),
}


def get_protocol(name: str) -> ProtocolSpec:
    """The protocol called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown data protocol {name!r}; choose one of {sorted(PROTOCOLS)}"
        ) from None


def protocol_user_types(name: str) -> tuple[str, ...]:
    """The sorted user types of protocol ``name``."""
    return get_protocol(name).user_types


def normalise_type_mix(name: str, type_mix: Mapping[str, float] | None) -> dict[str, float]:
    """Shares of the protocol's user types, summing to 1, in sorted type order.

    None means equal shares. A type left out of ``type_mix`` gets no users.

    Raises:
        ConfigError: an unknown type, a negative or non-finite share, or all shares zero.
    """
    types = get_protocol(name).user_types
    if type_mix is None:
        return {t: 1.0 / len(types) for t in types}
    unknown = sorted(set(type_mix) - set(types))
    if unknown:
        raise ConfigError(
            f"type_mix names {unknown}, which protocol {name!r} does not have; its user types "
            f"are {list(types)}"
        )
    shares = {t: float(type_mix.get(t, 0.0)) for t in types}
    if any(not np.isfinite(v) or v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ConfigError(
            f"type_mix {dict(type_mix)!r} must give non-negative shares with a positive sum, "
            f'e.g. {{"{types[0]}": 0.3, "{types[1]}": 0.7}}'
        )
    total = sum(shares.values())
    return {t: v / total for t, v in shares.items()}


def make_candidates(name: str, raw_pairs: Iterable[RawPair]) -> list[Candidate]:
    """The protocol's candidates, one per distinct pair id (first occurrence wins).

    Duplicates are dropped after the protocol's own selection (relabeled-dpl rows share ids
    with the HH test pairs they relabel), because a comparison held by two clients would break
    the promise that no pair is in two clients and could leak between training and evaluation.
    """
    unique: dict[str, Candidate] = {}
    for cand in get_protocol(name).make_candidates(list(raw_pairs)):
        unique.setdefault(cand.raw.pair_id, cand)
    return list(unique.values())


def assign(candidate: Candidate, user_type: str, rng: np.random.Generator) -> Pair:
    """The pair as one user of ``user_type`` sees it, with a random display order.

    Randomising which response comes first keeps position from carrying the label.

    Raises:
        ConfigError: the type may not hold this candidate or its label is unknown.
    """
    if candidate.owner not in (None, user_type) or user_type not in candidate.labels:
        raise ConfigError(
            f"pair {candidate.raw.pair_id} cannot go to a {user_type!r} user "
            f"(known labels: {sorted(candidate.labels)})"
        )
    swap = bool(rng.integers(2))  # 1: rejected is shown first
    responses = (candidate.raw.chosen, candidate.raw.rejected)
    shown = (responses[1], responses[0]) if swap else responses
    labels = {t: label ^ int(swap) for t, label in sorted(candidate.labels.items())}
    return Pair(
        pair_id=candidate.raw.pair_id,
        prompt=candidate.raw.prompt,
        response_a=shown[0],
        response_b=shown[1],
        preferred=labels[user_type],
        user_type=user_type,
        conflicting=candidate.conflicting,
        labels_by_type=labels,
        subset=candidate.raw.subset,
        domain=pair_domain(candidate.raw),
    )


def pair_domain(raw: RawPair) -> str:
    """ "harmless" or "helpful": the HH collection of the pair's prompt ("" outside HH).

    relabeled-dpl rows name their source in ``data_subset`` ("harmless" or "helpful").
    """
    subset = raw.extra.get("data_subset") or raw.subset
    if subset in (*HARMLESS_SUBSETS, HARMLESS):
        return HARMLESS
    if subset in (*HELPFUL_SUBSETS, HELPFUL):
        return HELPFUL
    return ""


def make_pairs(
    name: str,
    raw_pairs: Iterable[RawPair],
    *,
    seed: int,
    type_mix: Mapping[str, float] | None = None,
) -> list[Pair]:
    """Typed pairs without a client partition, e.g. for centralised training or inspection.

    P1/P2 pairs take their owner's type; P3 and synthetic pairs get a type drawn from
    ``type_mix`` (default: equal shares), one type per pair.
    """
    mix = normalise_type_mix(name, type_mix)
    rng = np.random.default_rng([seed, 0x7A1])
    types = list(mix)
    probabilities = np.array(list(mix.values()))
    out = []
    for cand in make_candidates(name, raw_pairs):
        user_type = cand.owner or types[int(rng.choice(len(types), p=probabilities))]
        out.append(assign(cand, user_type, rng))
    return out
