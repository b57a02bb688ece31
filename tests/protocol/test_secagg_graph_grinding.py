"""A server that grinds round ids and U1 subsets cannot steer the SecAgg+ graph.

The attack (issue 14, item 2): with 2 colluding clients of 10 and degree 2, a target whose two
neighbours are both colluders has every pairwise mask known to the coalition; once its self-mask
is reconstructed (it survives), its update is recovered exactly. Under the old seed rule (a hash of
the round id and U1, both chosen by the server) the server can try candidates offline until the
target lands between the colluders. Under the commit-reveal rule the seed also hashes a fresh nonce
from every member of U1, committed with its signed keys before U1 is fixed and revealed only after
every member signed the directory, so every candidate the server can evaluate is a guess.

Each test measures how often the target ends up between the colluders and compares it with a
random graph (the same event under a seed the server never saw). The control runs the same grinding
server against the old rule and shows the attack succeeding nearly always, so the measurement can
fail.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from collections.abc import Callable, Mapping, Sequence

from fedvpa_secure.secagg import graph
from fedvpa_secure.secagg.encoding import lp_str, lp_strs

TARGET = "c000"
COLLUDERS = frozenset({"c001", "c002"})
HONEST = [f"c{i:03d}" for i in range(3, 12)]  # nine honest advertisers; U1 keeps seven of them
U1_SIZE = 10
DEGREE = 2
TRIALS = 10_000
# the target's two ring neighbours are two of the nine other members, uniformly: 2/9 * 1/8
RANDOM_GRAPH_RATE = 1 / 36

Seeder = Callable[[str, Sequence[str], Mapping[str, bytes]], bytes]


def _old_rule_seed(round_id: str, members: Sequence[str], _nonces: Mapping[str, bytes]) -> bytes:
    """The replaced rule: SHA-256 of the label, the round id and sorted U1 - all server-chosen."""
    return hashlib.sha256(graph.LABEL_GRAPH + lp_str(round_id) + lp_strs(sorted(members))).digest()


def _commit_reveal_seed(
    round_id: str, members: Sequence[str], nonces: Mapping[str, bytes]
) -> bytes:
    return graph.graph_seed(round_id, {u: nonces[u] for u in members})


def _between_colluders(members: Sequence[str], seed: bytes) -> bool:
    return graph.neighbours_of(TARGET, members, DEGREE, seed) <= COLLUDERS


def _candidate_u1s() -> list[list[str]]:
    """Every U1 of the target, both colluders and seven of the nine honest advertisers (36)."""
    keep = U1_SIZE - 1 - len(COLLUDERS)
    return [
        sorted({TARGET, *COLLUDERS, *honest}) for honest in itertools.combinations(HONEST, keep)
    ]


def _grind(seeder: Seeder, trials: int, round_ids_per_trial: int) -> int:
    """Run ``trials`` rounds against a grinding server; count the targets placed between colluders.

    Per round the server fixes the round id and U1 from what it holds at that point: the
    colluders' nonces (they chose them) and the honest clients' commitments, never their nonces.
    It evaluates every candidate with the best stand-in it has for the unknown nonces (the
    commitment) and keeps the first candidate predicted to succeed. Then the honest clients reveal
    their real nonces and the graph is what the seed rule gives.
    """
    candidates = _candidate_u1s()
    hits = 0
    for trial in range(trials):
        colluder_nonces = {u: hashlib.sha256(f"{u}/{trial}".encode()).digest() for u in COLLUDERS}
        choice: tuple[str, list[str]] | None = None
        for r in range(round_ids_per_trial):
            round_id = f"round-{trial}-{r}"
            real = {u: secrets.token_bytes(graph.NONCE_BYTES) for u in HONEST}
            known = {u: graph.nonce_commitment(round_id, u, real[u]) for u in HONEST}
            known |= {TARGET: b""} | colluder_nonces
            for members in candidates:
                if _between_colluders(members, seeder(round_id, members, known)):
                    choice = (round_id, members)
                    break
            if choice is not None:
                break
        if choice is None:
            choice = (round_id, candidates[0])
        round_id, members = choice
        revealed = real | colluder_nonces | {TARGET: secrets.token_bytes(graph.NONCE_BYTES)}
        hits += _between_colluders(members, seeder(round_id, members, revealed))
    return hits


def _random_graph_hits(trials: int) -> int:
    members = _candidate_u1s()[0]
    return sum(_between_colluders(members, secrets.token_bytes(32)) for _ in range(trials))


def _tolerance(trials: int, rate: float, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(2 * trials * rate * (1 - rate))


def test_the_random_graph_rate_is_the_analytic_one() -> None:
    """The event is what the module says: a uniformly random ring puts the target there 1/36."""
    hits = _random_graph_hits(TRIALS)
    assert abs(hits - TRIALS * RANDOM_GRAPH_RATE) <= _tolerance(TRIALS, RANDOM_GRAPH_RATE)


def test_grinding_10000_round_ids_and_u1_subsets_does_no_better_than_a_random_graph() -> None:
    # one round id per round: under commit-reveal a round id cannot be re-tried without the
    # clients' fresh commitments, so the server's whole freedom is the U1 subset (36 of them)
    ground = _grind(_commit_reveal_seed, TRIALS, round_ids_per_trial=1)
    random_graph = _random_graph_hits(TRIALS)
    print(
        f"target between colluders: grinding server {ground}/{TRIALS}, "
        f"random graph {random_graph}/{TRIALS}, analytic {TRIALS * RANDOM_GRAPH_RATE:.0f}"
    )
    assert ground - random_graph <= _tolerance(TRIALS, RANDOM_GRAPH_RATE)
    assert ground <= TRIALS * RANDOM_GRAPH_RATE + _tolerance(TRIALS, RANDOM_GRAPH_RATE)


def test_control_the_same_server_steers_the_old_public_seed() -> None:
    """Control: against the old rule the grinder finds a placement offline in almost every round."""
    trials = 1_000
    ground = _grind(_old_rule_seed, trials, round_ids_per_trial=10)
    # 360 candidates at 1/36 each: it fails with probability (35/36)^360 < 1e-4
    assert ground >= 0.99 * trials
    random_graph = _random_graph_hits(trials)
    assert random_graph < 0.1 * trials
