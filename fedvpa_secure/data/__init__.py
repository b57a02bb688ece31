"""HH-RLHF loading, user-type protocols, client partitioning, episodes and splits.

Typical use::

    source, description = resolve_source(args.data)
    fed = build_federated_data("p3", source, n_clients=20, pairs_per_client=64,
                               n_eval_clients=10, seed=0)
    for episode in partition_episodes(len(client.pairs), 8, 8, rng): ...
"""

from fedvpa_secure.data.dialogue import first_human_turn, pair_id, split_dialogue_pair
from fedvpa_secure.data.episodes import (
    Episode,
    cross_fit_splits,
    eval_split,
    partition_episodes,
)
from fedvpa_secure.data.hh_rlhf import (
    HARMLESS_SUBSETS,
    HELPFUL_SUBSETS,
    HUB_ID,
    KNOWN_SUBSETS,
    RELABELED_SUBSET,
    RawDataset,
    load_folder,
    load_hub,
    parse_row,
)
from fedvpa_secure.data.partition import allocate_clients, build_federated_data
from fedvpa_secure.data.protocols import (
    PROTOCOLS,
    Candidate,
    ProtocolSpec,
    assign,
    get_protocol,
    make_candidates,
    make_pairs,
    normalise_type_mix,
    protocol_user_types,
)
from fedvpa_secure.data.source import SYNTHETIC, Source, SyntheticSource, resolve_source
from fedvpa_secure.data.split import SplitReport, is_eval_prompt, split_folder, split_pairs
from fedvpa_secure.data.synthetic import generate_synthetic
from fedvpa_secure.data.types import (
    ClientData,
    FederatedData,
    Pair,
    RawPair,
    join_prompt_response,
)

__all__ = [
    "HARMLESS_SUBSETS",
    "HELPFUL_SUBSETS",
    "HUB_ID",
    "KNOWN_SUBSETS",
    "PROTOCOLS",
    "RELABELED_SUBSET",
    "SYNTHETIC",
    "Candidate",
    "ClientData",
    "Episode",
    "FederatedData",
    "Pair",
    "ProtocolSpec",
    "RawDataset",
    "RawPair",
    "Source",
    "SplitReport",
    "SyntheticSource",
    "allocate_clients",
    "assign",
    "build_federated_data",
    "cross_fit_splits",
    "eval_split",
    "first_human_turn",
    "generate_synthetic",
    "get_protocol",
    "is_eval_prompt",
    "join_prompt_response",
    "load_folder",
    "load_hub",
    "make_candidates",
    "make_pairs",
    "normalise_type_mix",
    "pair_id",
    "parse_row",
    "partition_episodes",
    "protocol_user_types",
    "resolve_source",
    "split_dialogue_pair",
    "split_folder",
    "split_pairs",
]
