"""Splitting an HH-RLHF dialogue pair into the shared prompt and the two final responses.

HH-RLHF stores each side of a comparison as a whole dialogue ("\\n\\nHuman: ...\\n\\nAssistant:
..."). The two sides share every turn but the last Assistant turn, so the prompt is the shared
part and the responses are what follows the last shared "\\n\\nAssistant:" marker. Splitting
each side at its *own* last marker is wrong for the ~1% of rows whose response itself contains
"Human:"/"Assistant:" text (the model hallucinated further turns); splitting at the last marker
inside the common prefix gets those right.
"""

from __future__ import annotations

import hashlib

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
PAIR_ID_HEX_CHARS = 16  # 64 bits: collision-free in practice for millions of pairs


class DialogueFormatError(ValueError):
    """A dialogue pair cannot be split; the loader adds the file and line to the message."""


def _normalise(dialogue: str) -> str:
    """Restore the leading blank line that relabeled-dpl (and some exports) drop."""
    stripped = dialogue.lstrip()
    return "\n\n" + stripped if stripped.startswith(("Human:", "Assistant:")) else dialogue


def split_dialogue_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two dialogues into (prompt, chosen response, rejected response).

    The prompt is every turn before the final Assistant turn, without the leading blank line
    ("Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."); responses are stripped of surrounding
    whitespace. The split point is where at least one side's last Assistant turn starts and both
    sides agree on everything before it, so a response that contains turn markers stays whole.

    Args:
        chosen: the preferred dialogue.
        rejected: the other dialogue.

    Returns:
        (prompt, chosen_response, rejected_response).

    Raises:
        DialogueFormatError: a side has no Assistant turn, or the two sides differ before the
            final Assistant turn (they are not two answers to one prompt).
    """
    chosen, rejected = _normalise(chosen), _normalise(rejected)
    k_c, k_r = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    if k_c < 0 or k_r < 0:
        side = "chosen" if k_c < 0 else "rejected"
        raise DialogueFormatError(
            f"the {side} dialogue has no '\\n\\nAssistant:' turn; each side must be a dialogue "
            "ending with the Assistant response being compared"
        )
    if chosen[:k_c] == rejected[:k_r]:
        split_c = split_r = k_c
    else:
        split_c = split_r = _shared_split(chosen, rejected, k_c, k_r)
    prompt = chosen[:split_c].strip()
    if not prompt.startswith("Human:"):
        raise DialogueFormatError(
            "the dialogue does not start with a 'Human:' turn; expected '\\n\\nHuman: ...' "
            "followed by '\\n\\nAssistant: ...' turns"
        )
    return (
        prompt,
        chosen[split_c + len(ASSISTANT) :].strip(),
        rejected[split_r + len(ASSISTANT) :].strip(),
    )


def _shared_split(chosen: str, rejected: str, k_c: int, k_r: int) -> int:
    """The last Assistant marker inside the common prefix, if it is one side's last marker."""
    limit = min(len(chosen), len(rejected))
    common = 0
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    k = chosen.rfind(ASSISTANT, 0, common)
    # Accept only if one side's final turn starts here: otherwise both "responses" would carry
    # extra turns, which means the two dialogues diverged earlier (different prompts).
    if k < 0 or k not in (k_c, k_r):
        raise DialogueFormatError(
            "chosen and rejected do not share a prompt: they differ before the final Assistant "
            f"turn (first difference at character {common}); both sides must repeat the same "
            "dialogue and differ only in the last Assistant response"
        )
    return k


def first_human_turn(prompt: str) -> str:
    """The text of the first Human turn: the key that decides train/eval membership.

    Splitting by this key keeps every continuation of one conversation opener on one side, so
    no prompt (and no multi-turn variant of it) is in both the training and the evaluation set.
    """
    text = _normalise(prompt).strip()
    text = text.removeprefix("Human:")
    end = text.find(ASSISTANT)
    return (text if end < 0 else text[:end]).strip()


def pair_id(prompt: str, response_1: str, response_2: str) -> str:
    """A stable id of one comparison, the same whichever response was chosen and in any file.

    The responses are hashed in sorted order so relabeled copies of an HH pair (whose chosen
    response may be the other one) get the id of the original pair.
    """
    first, second = sorted((response_1.strip(), response_2.strip()))
    digest = hashlib.sha256()
    for part in (prompt.strip(), first, second):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguous joins
        digest.update(data)
    return digest.hexdigest()[:PAIR_ID_HEX_CHARS]
