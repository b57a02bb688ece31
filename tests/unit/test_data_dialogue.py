"""Splitting HH-RLHF dialogue pairs into prompt + final responses, and pair ids."""

from __future__ import annotations

import pytest

from fedvpa_secure.data.dialogue import (
    DialogueFormatError,
    first_human_turn,
    pair_id,
    split_dialogue_pair,
)
from fedvpa_secure.data.types import join_prompt_response


def dialogue(*turns: str) -> str:
    """Alternate Human/Assistant turns into the HH-RLHF string form."""
    speakers = ("Human", "Assistant")
    return "".join(f"\n\n{speakers[i % 2]}: {text}" for i, text in enumerate(turns))


def test_single_turn_splits_into_prompt_and_responses() -> None:
    prompt, chosen, rejected = split_dialogue_pair(
        dialogue("Hi there?", "Hello! How can I help?"), dialogue("Hi there?", "Go away.")
    )
    assert prompt == "Human: Hi there?"
    assert (chosen, rejected) == ("Hello! How can I help?", "Go away.")


def test_multi_turn_prompt_keeps_every_turn_but_the_last_assistant_turn() -> None:
    shared = ("What is DVT?", "Deep vein thrombosis.", "Is it dangerous?")
    prompt, chosen, rejected = split_dialogue_pair(
        dialogue(*shared, "It can be; see a doctor."), dialogue(*shared, "No idea.")
    )
    assert (
        prompt
        == "Human: What is DVT?\n\nAssistant: Deep vein thrombosis.\n\nHuman: Is it dangerous?"
    )
    assert chosen == "It can be; see a doctor."
    assert rejected == "No idea."
    # Joining gives back the chosen dialogue (without the leading blank line).
    assert join_prompt_response(prompt, chosen) == dialogue(*shared, chosen).strip()


def test_response_with_extra_turns_inside_stays_whole() -> None:
    """A hallucinated "Human: ... Assistant: ..." inside one response is part of that response."""
    shared = ("Are drag queens men?", "Usually, yes.", "Isn't that drag kings?")
    chosen_text = "No. Human: Then why? \n\nAssistant: Because of history."
    prompt, chosen, rejected = split_dialogue_pair(
        dialogue(*shared, chosen_text), dialogue(*shared, "Drag kings are the opposite.")
    )
    assert prompt.endswith("Human: Isn't that drag kings?")
    assert chosen == chosen_text.strip()
    assert rejected == "Drag kings are the opposite."


def test_rejected_response_with_extra_assistant_turn_stays_whole() -> None:
    shared = ("Any others I could learn about?",)
    rejected_text = "Hermes.\n\nAssistant: Let's see what we can find."
    prompt, _chosen, rejected = split_dialogue_pair(
        dialogue(*shared, "Lots! Try the Greek pantheon."), dialogue(*shared, rejected_text)
    )
    assert prompt == "Human: Any others I could learn about?"
    assert rejected == rejected_text


def test_response_containing_human_text_inline() -> None:
    prompt, chosen, _ = split_dialogue_pair(
        dialogue("Rob a house when?", "Human: I think there's an easier way."),
        dialogue("Rob a house when?", "I can't help with that."),
    )
    assert prompt == "Human: Rob a house when?"
    assert chosen == "Human: I think there's an easier way."


def test_missing_leading_blank_line_parses_the_same() -> None:
    with_blank = split_dialogue_pair(dialogue("Q?", "A1"), dialogue("Q?", "A2"))
    without = split_dialogue_pair(dialogue("Q?", "A1").lstrip("\n"), dialogue("Q?", "A2")[2:])
    assert with_blank == without


def test_empty_final_response_is_kept_as_empty_string() -> None:
    prompt, chosen, rejected = split_dialogue_pair(dialogue("Q?", ""), dialogue("Q?", "Answer."))
    assert (prompt, chosen, rejected) == ("Human: Q?", "", "Answer.")


def test_identical_sides_still_parse() -> None:
    _prompt, chosen, rejected = split_dialogue_pair(
        dialogue("Q?", "Same."), dialogue("Q?", "Same.")
    )
    assert chosen == rejected == "Same."


@pytest.mark.parametrize(
    ("chosen", "rejected", "side"),
    [
        ("\n\nHuman: only a question", dialogue("only a question", "A"), "chosen"),
        (dialogue("Q?", "A"), "\n\nHuman: Q?", "rejected"),
        ("plain text", "other text", "chosen"),
    ],
)
def test_dialogue_without_assistant_turn_is_rejected(chosen: str, rejected: str, side: str) -> None:
    with pytest.raises(DialogueFormatError, match=f"the {side} dialogue has no"):
        split_dialogue_pair(chosen, rejected)


def test_sides_that_do_not_share_a_prompt_are_rejected() -> None:
    with pytest.raises(DialogueFormatError, match="do not share a prompt"):
        split_dialogue_pair(dialogue("How do I bake bread?", "Knead."), dialogue("Who won?", "Us."))


def test_sides_diverging_in_an_earlier_turn_are_rejected() -> None:
    """Both 'responses' would carry extra turns: that is two prompts, not one."""
    chosen = dialogue("Hi", "Hello", "Tell me a joke", "Knock knock")
    rejected = dialogue("Hi", "Hello", "Tell me a fact", "Water is wet")
    with pytest.raises(DialogueFormatError, match="do not share a prompt"):
        split_dialogue_pair(chosen, rejected)


def test_dialogue_not_starting_with_human_is_rejected() -> None:
    with pytest.raises(DialogueFormatError, match="Human:"):
        split_dialogue_pair("Intro text\n\nAssistant: A", "Intro text\n\nAssistant: B")


def test_pair_id_ignores_which_response_was_chosen_and_whitespace() -> None:
    assert pair_id("Human: Q?", "A", "B") == pair_id("  Human: Q?\n", "B ", " A")
    assert len(pair_id("Human: Q?", "A", "B")) == 16


def test_pair_id_separates_prompt_and_responses() -> None:
    assert pair_id("Human: Q?", "A", "B") != pair_id("Human: Q?", "A", "C")
    assert pair_id("Human: Q?", "A", "B") != pair_id("Human: Q!", "A", "B")
    # Length-prefixed fields: moving text across a field boundary changes the id.
    assert pair_id("Human: ab", "c", "d") != pair_id("Human: a", "bc", "d")


def test_first_human_turn_of_multi_and_single_turn_prompts() -> None:
    multi = "Human: Where is Oregon?\n\nAssistant: In the US.\n\nHuman: Thanks"
    assert first_human_turn(multi) == "Where is Oregon?"
    assert first_human_turn("\n\nHuman:  Hi \n") == "Hi"
    assert first_human_turn(multi) == first_human_turn("Human: Where is Oregon?")
