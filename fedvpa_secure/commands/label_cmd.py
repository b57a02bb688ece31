"""``fedvpa-secure label``: a per-user or per-type DPO dataset (see :mod:`.score_cmd`)."""

from __future__ import annotations

import argparse

from fedvpa_secure.commands.score_cmd import register_command


def register(sub: argparse._SubParsersAction) -> None:
    register_command(sub, "label")
