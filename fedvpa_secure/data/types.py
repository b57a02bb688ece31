"""Plain data records shared by loading, protocols, partitioning and the learner.

A :class:`Pair` is one comparison *as one user labels it*: the two responses in the order they are
shown (randomised, so position carries no signal), which one this user prefers, and the labels
every known user type would give (needed for preference-switching accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RawPair:
    """One HH-RLHF comparison after parsing, before any protocol assigns it to a user type."""

    pair_id: str  # stable hash of prompt + both responses; identical across runs and machines
    prompt: str  # every turn but the last Assistant turn, "Human: ...\n\nAssistant: ..." form
    chosen: str  # final Assistant response preferred in the file
    rejected: str
    subset: str  # source folder, e.g. "helpful-base", "harmless-base", "relabeled-dpl"
    source: str  # "file.jsonl.gz:LINE" (or "hub:split:INDEX"), for error messages and audits
    extra: Mapping[str, object] = field(default_factory=dict)  # relabeled-dpl fields etc.


@dataclass(frozen=True)
class Pair:
    """A comparison as one user sees and labels it."""

    pair_id: str
    prompt: str
    response_a: str  # shown first
    response_b: str  # shown second
    preferred: int  # 0 if this user prefers response_a, 1 if response_b
    user_type: str
    conflicting: bool  # the user types disagree on this pair (protocol-specific definition)
    labels_by_type: Mapping[str, int]  # known label of each type (always includes user_type)
    subset: str = ""
    # the HH collection the prompt came from ("harmless": red-team prompts, "helpful"), "" if
    # none. Public metadata of the pair, not a label; a domain-gated model learns to recognise it
    domain: str = ""

    def text_a(self) -> str:
        """The text the backbone embeds for response a: prompt followed by the response."""
        return join_prompt_response(self.prompt, self.response_a)

    def text_b(self) -> str:
        return join_prompt_response(self.prompt, self.response_b)


@dataclass(frozen=True)
class ClientData:
    """All pairs one user (client) holds; every pair carries the client's own type."""

    client_id: str
    user_type: str
    pairs: tuple[Pair, ...]


@dataclass(frozen=True)
class FederatedData:
    """The output of a data protocol: training clients and unseen evaluation clients."""

    protocol: str
    user_types: tuple[str, ...]  # sorted, e.g. ("harmless-first", "helpful-first")
    train_clients: tuple[ClientData, ...]
    eval_clients: tuple[ClientData, ...]
    description: str = ""  # where the data came from, for the report (folder, hub id, synthetic)


def join_prompt_response(prompt: str, response: str) -> str:
    """Join a prompt and a final response the way the dialogue had them."""
    prompt = prompt.rstrip()
    return f"{prompt}\n\nAssistant: {response.strip()}" if prompt else response.strip()
