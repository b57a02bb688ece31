"""Generators for every DP draw, seeded from the OS CSPRNG and never from a public seed.

The run seed (in report.json, in every task the server sends) drives data order and
initialisation only. If it also seeded the DP-SGD noise, the Poisson sampling of episodes or the
prior release, anyone who knows it -- the server first of all -- could replay a client's round
with other data, get bit-identical noise and subtract it from what the client released. So each
DP draw takes a generator from here: 128 bits from :func:`os_entropy` (``secrets``, i.e. the OS
CSPRNG) per generator.

Tests that need reproducible noise pass their own generator to the mechanism's explicit
``noise_generator`` argument, or replace :func:`os_entropy`; no task, TOML key or flag reaches
either.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

ENTROPY_BITS = 128


def os_entropy() -> int:
    """Fresh seed material from the OS CSPRNG."""
    return secrets.randbits(ENTROPY_BITS)


def secret_torch_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` for Gaussian DP noise (torch seeds take 64 bits)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(os_entropy() & (2**64 - 1))
    return generator


def secret_numpy_rng() -> np.random.Generator:
    """A numpy generator for secret sampling decisions (Poisson sampling of episodes)."""
    return np.random.default_rng(os_entropy())
