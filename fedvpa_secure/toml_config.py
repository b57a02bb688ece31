"""Reading the server's and clients' TOML files the same way.

Relative paths in a config file are relative to that file, not to the working directory, so a
run folder can be moved or started from anywhere.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from fedvpa_secure.errors import ConfigError


def read_toml(path: str | Path, what: str) -> tuple[dict[str, Any], Callable[[object, str], Path]]:
    """Parse ``path``; returns the table and a resolver for path values found in it.

    ``what`` names the file in errors ("server config", "client config").
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {err}") from err
    base = p.resolve().parent

    def rel(value: object, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a path string in {p}")
        q = Path(value)
        return q if q.is_absolute() else base / q

    return raw, rel


def check_keys(
    table: Mapping[str, Any], known: Collection[str], where: str, hint: str = ""
) -> None:
    """Refuse a key ``where`` does not know, naming it and the closest known key.

    A typo (``[round]`` for ``[rounds]``, ``run_idd``) must never leave a setting silently at its
    default: for a privacy setting that would be a weaker run than the one the user wrote.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table ([section] with keys), not {table!r:.40}")
    unknown = sorted(set(table) - set(known))
    if not unknown:
        return
    guesses = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        if close:
            guesses.append(f"{key!r} -> did you mean {close[0]!r}?")
    advice = f" ({'; '.join(guesses)})" if guesses else ""
    raise ConfigError(
        f"{where} has unknown key(s) {unknown}{advice}{hint}; known keys: {sorted(known)}"
    )
