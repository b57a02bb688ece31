"""Canaries for membership inference and the one-run audit (PRIVACY.md section 5).

A canary is something whose presence in training the auditor later tries to detect from the
published global model. Each of the m canaries is included independently with probability 1/2
(Steinke, Nasr, Jagielski 2023, section 3), from a seeded generator, so the inclusion bits are
known to the auditor and independent of everything else.

* Record-level (the unit of client DP-SGD is one pair): a canary is one MISLABELLED pair - an
  agreeing synthetic pair (helpful vs rude answer, which every persona ranks the same way) with
  the label flipped so that the rude answer wins. It is given to a host training client; if
  included it joins the host's pairs. Flipped labels are the worst case the model cannot explain
  by generalising, so only memorisation lowers their loss (Carlini et al. 2019 "The Secret
  Sharer" use out-of-distribution canaries for the same reason).
* User-level (the unit of DP-FedAvg is one client's whole data): a canary is a whole extra
  client whose pairs carry independent uniformly random labels (a "user" with no consistent
  preference, so its labels are not predictable from any persona), included as a training client
  with probability 1/2.

Every canary also gets a fixed probe (context pairs + query pairs) for scoring, built the same
way whether or not the canary was included, so in and out canaries are scored identically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedvpa_secure.data.protocols import assign, make_candidates
from fedvpa_secure.data.synthetic import generate_synthetic
from fedvpa_secure.data.types import ClientData, FederatedData, Pair
from fedvpa_secure.errors import ConfigError

LEVELS = ("record", "user")
_CANARY_STREAM = 0xCA7A


@dataclass(frozen=True)
class CanaryProbe:
    """How one canary is scored: a probe client, its context rows and its query rows."""

    client: ClientData
    context: tuple[int, ...]
    query: tuple[int, ...]


@dataclass(frozen=True)
class CanarySet:
    """m canaries, their inclusion bits and their probes.

    Attributes:
        level: "record" or "user".
        included: the true inclusion bits (what the audit must guess).
        probes: one probe per canary, same order as ``included``.
        inserted: whether included canaries were actually put into the training data (False for
            the negative control, where every canary is left out whatever its bit says).
    """

    level: str
    included: np.ndarray
    probes: tuple[CanaryProbe, ...]
    inserted: bool

    @property
    def m(self) -> int:
        return int(self.included.size)

    @property
    def members(self) -> np.ndarray:
        """True membership in the trained model (all False when nothing was inserted)."""
        return self.included & self.inserted


def _fresh_pairs(data: FederatedData, n: int, seed: int, agreeing_only: bool) -> list:
    """Synthetic candidates not present anywhere in ``data`` (by pair id)."""
    taken = {p.pair_id for c in (*data.train_clients, *data.eval_clients) for p in c.pairs}
    want = 2 * n + 8
    for _attempt in range(6):
        raw = generate_synthetic(2 * want, seed)
        cands = [c for c in make_candidates("synthetic", raw) if c.raw.pair_id not in taken]
        if agreeing_only:
            cands = [c for c in cands if not c.conflicting]
        if len(cands) >= n:
            return cands[:n]
        want *= 2
    raise ConfigError(f"could not generate {n} fresh canary pairs; ask for fewer canaries")


def _flipped(pair: Pair) -> Pair:
    """The same comparison with every type's label flipped (the rude answer wins)."""
    flip = 1 - pair.preferred
    return replace(
        pair,
        preferred=flip,
        conflicting=False,
        labels_by_type={t: flip for t in pair.labels_by_type},
        subset="canary",
    )


def _random_labels(pair: Pair, rng: np.random.Generator) -> Pair:
    label = int(rng.integers(2))
    return replace(
        pair,
        preferred=label,
        labels_by_type={t: label for t in pair.labels_by_type},
        subset="canary",
    )


def _replace_clients(
    data: FederatedData, train: tuple[ClientData, ...], note: str
) -> FederatedData:
    return FederatedData(
        protocol=data.protocol,
        user_types=data.user_types,
        train_clients=train,
        eval_clients=data.eval_clients,
        description=f"{data.description}; {note}",
    )


def record_canaries(
    data: FederatedData,
    m: int,
    seed: int,
    context_size: int,
    insert: bool = True,
) -> tuple[FederatedData, CanarySet]:
    """Insert m mislabelled pairs into training clients, each with probability 1/2.

    Canary i is hosted by training client ``i mod n_clients`` (after a seeded shuffle). Its
    probe uses ``context_size`` of the host's own (non-canary) pairs as context and the canary
    as the single query, so the latent encoder sees the host's real preferences.

    Args:
        data: the federation without canaries.
        m: number of canaries.
        seed: seeds the canary pairs, hosts and inclusion bits.
        context_size: context pairs in each probe.
        insert: False for the negative control (bits drawn, nothing inserted).

    Returns:
        The federation with the included canaries added, and the :class:`CanarySet`.
    """
    if m < 2:
        raise ConfigError(f"canaries={m} is invalid: expected at least 2")
    rng = np.random.default_rng([seed, _CANARY_STREAM, 1])
    included = rng.random(m) < 0.5
    cands = _fresh_pairs(data, m, seed + 1_000_003, agreeing_only=True)
    hosts = rng.permutation(len(data.train_clients))
    extra: dict[int, list[Pair]] = {}
    probes = []
    for i, cand in enumerate(cands):
        h = int(hosts[i % len(hosts)])
        host = data.train_clients[h]
        canary = _flipped(assign(cand, host.user_type, rng))
        k = min(context_size, len(host.pairs))
        ctx_rows = sorted(rng.choice(len(host.pairs), size=k, replace=False).tolist())
        probe_client = ClientData(
            client_id=f"probe-record-{i}",
            user_type=host.user_type,
            pairs=(*(host.pairs[j] for j in ctx_rows), canary),
        )
        probes.append(CanaryProbe(probe_client, tuple(range(k)), (k,)))
        if insert and included[i]:
            extra.setdefault(h, []).append(canary)
    train = tuple(
        ClientData(c.client_id, c.user_type, (*c.pairs, *extra.get(j, ())))
        for j, c in enumerate(data.train_clients)
    )
    note = f"{int(included.sum()) if insert else 0} of {m} record canaries inserted"
    return _replace_clients(data, train, note), CanarySet("record", included, tuple(probes), insert)


def user_canaries(
    data: FederatedData,
    m: int,
    seed: int,
    pairs_per_canary: int,
    context_size: int,
    insert: bool = True,
) -> tuple[FederatedData, CanarySet]:
    """Add m extra clients with random labels, each a training client with probability 1/2.

    The probe of canary client i is its own pairs: the first ``context_size`` as context, the
    rest as queries (the same split whether it trained or not).
    """
    if m < 2:
        raise ConfigError(f"canaries={m} is invalid: expected at least 2")
    if pairs_per_canary <= context_size:
        raise ConfigError(
            f"pairs_per_canary={pairs_per_canary} must exceed the context size {context_size}"
        )
    rng = np.random.default_rng([seed, _CANARY_STREAM, 2])
    included = rng.random(m) < 0.5
    cands = _fresh_pairs(data, m * pairs_per_canary, seed + 2_000_003, agreeing_only=False)
    order = rng.permutation(len(cands))
    types = list(data.user_types)
    clients, probes = [], []
    for i in range(m):
        user_type = types[i % len(types)]
        rows = order[i * pairs_per_canary : (i + 1) * pairs_per_canary]
        pairs = tuple(_random_labels(assign(cands[j], user_type, rng), rng) for j in rows)
        client = ClientData(f"canary-user-{i}", user_type, pairs)
        clients.append(client)
        probes.append(
            CanaryProbe(
                client, tuple(range(context_size)), tuple(range(context_size, pairs_per_canary))
            )
        )
    added = tuple(c for c, bit in zip(clients, included, strict=True) if insert and bit)
    note = f"{len(added)} of {m} canary users added"
    return (
        _replace_clients(data, (*data.train_clients, *added), note),
        CanarySet("user", included, tuple(probes), insert),
    )


__all__ = ["LEVELS", "CanaryProbe", "CanarySet", "record_canaries", "user_canaries"]
