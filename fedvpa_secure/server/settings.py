"""``server.toml`` -> frozen, validated settings; the experiment config from/to plain dicts.

Example ``server.toml``::

    address = "127.0.0.1:50051"
    run_dir = "runs/fed"          # report, ledger, checkpoints (checkpoint_dir overrides)
    registry = "certs/registry.json"
    [tls]
    cert = "certs/server.pem"
    key = "certs/server.key"
    ca = "certs/ca.pem"
    [rounds]
    rounds = 2
    clients_per_round = 5         # a client's default policy refuses rounds of fewer than 5
    min_survivors = 4             # SecAgg min_clients: never below 3
    threshold = 0                 # 0: the secagg default for the round size
    hardened = true
    secure = true
    train_deadline_s = 300        # stage 0 includes local training
    stage_deadline_s = 60
    join_timeout_s = 600
    max_attempts = 3
    [dp]                          # user-level budget of the server's ledger
    epsilon_max = 8.0
    delta = 1e-5
    target_epsilon = 4.0          # turns user-level distributed DP on (or noise_multiplier)
    clip_norm = 1.0               # whole-update L2 clip S of each client
    noise = "discrete_gaussian"   # or "skellam"
    min_survivors = 4             # t_min the noise is calibrated to (default policy: >= 4)
    [quantization]
    delta_clip = 256.0
    prior_clip = 65536.0
    [limits]                      # what one client may hold of the server (SECURITY.md)
    stream_deadline_s = 120       # a Submit/FetchModel stream running longer is cut
    max_streams_per_peer = 4      # concurrent calls of one client certificate
    max_streams = 0               # concurrent calls in all; 0: per-peer x registered + 8
    [experiment]                  # ExperimentConfig fields (method, model.*, train.*, data.*)
    method = "fedvpa-gp"
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.toml_config import check_keys, read_toml

MIB = 1024 * 1024


def _dataclass_in(hint: object) -> type | None:
    """The dataclass type in a hint like ``X`` or ``X | None``, else ``None``."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _dataclass_from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    check_keys(data, [f.name for f in dataclasses.fields(cls)], f"[{where}]")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = _dataclass_in(hints.get(name))
        if hint is not None and isinstance(value, Mapping):
            kwargs[name] = _dataclass_from_dict(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def experiment_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Rebuild an :class:`ExperimentConfig` (nested dicts, lists as tuples); validates it."""
    return _dataclass_from_dict(ExperimentConfig, data, "experiment")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class RoundSettings:
    """How rounds run. Deadlines in seconds; ``threshold`` 0 means the secagg default."""

    rounds: int = 2
    clients_per_round: int = 3
    min_survivors: int = 3
    threshold: int = 0
    hardened: bool = True
    secure: bool = True
    train_deadline_s: float = 300.0
    stage_deadline_s: float = 60.0
    liveness_s: float = 5.0
    # Training sends no heartbeat, so a client whose link died mid-training looks like a slow
    # one. Once enough clients have really answered for the round to finish without the rest
    # (the secagg threshold, min_survivors, t_min, and at least half), the rest get this factor
    # times as long again as the stage has taken (at least stage_deadline_s); 0: wait for
    # train_deadline_s.
    straggler_factor: float = 1.0
    join_timeout_s: float = 600.0
    max_attempts: int = 3
    alternate_plain: bool = False  # benchmarks only: every other round in the clear

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds.rounds={self.rounds} is invalid: expected >= 1")
        if self.min_survivors < 3:
            raise ConfigError(
                f"rounds.min_survivors={self.min_survivors} is invalid: expected >= 3 "
                "(a sum of two updates reveals each to the other)"
            )
        if self.clients_per_round < self.min_survivors:
            raise ConfigError(
                f"rounds.clients_per_round={self.clients_per_round} is invalid: expected >= "
                f"min_survivors={self.min_survivors}"
            )
        for name in ("train_deadline_s", "stage_deadline_s", "liveness_s", "join_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"rounds.{name}={getattr(self, name)} is invalid: expected > 0")
        if not self.straggler_factor >= 0:
            raise ConfigError(
                f"rounds.straggler_factor={self.straggler_factor} is invalid: expected >= 0"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"rounds.max_attempts={self.max_attempts} is invalid: expected >= 1")


@dataclass(frozen=True)
class DpSettings:
    """The server's user-level budget (its ledger's genesis) and, optionally, user-level DP.

    User-level distributed DP (PRIVACY.md section 2) is on when ``target_epsilon`` or
    ``noise_multiplier`` is set: every client clips its whole round update to ``clip_norm`` and
    adds an integer noise share of kind ``noise`` before masking, calibrated so that any
    ``min_survivors`` shares reach the target; a round with fewer survivors is aborted.
    ``noise_multiplier`` z asks for the noise of a Gaussian mechanism with multiplier z instead
    (the plan is calibrated to the epsilon such a mechanism would spend over the run).
    """

    epsilon_max: float = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    noise: str = "discrete_gaussian"
    min_survivors: int = 3

    def __post_init__(self) -> None:
        from fedvpa_secure.train.dp_config import ACCOUNTANT_CHOICES, NOISE_KINDS

        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(
                f"dp.{name}={getattr(self, name)!r} is invalid in server.toml: expected {allowed}"
            )

        if not (_finite(self.epsilon_max) and self.epsilon_max > 0):
            raise bad("epsilon_max", "a finite number > 0")
        if not (isinstance(self.delta, int | float) and 0 < self.delta < 1):
            raise bad("delta", "0 < delta < 1")
        if self.accountant not in ACCOUNTANT_CHOICES:
            raise bad("accountant", f"one of {ACCOUNTANT_CHOICES}")
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise ConfigError(
                "dp.target_epsilon and dp.noise_multiplier are both set in server.toml: give one "
                "(target_epsilon calibrates the noise; noise_multiplier fixes it)"
            )
        if self.target_epsilon is not None:
            if not (_finite(self.target_epsilon) and self.target_epsilon > 0):
                raise bad("target_epsilon", "a finite number > 0")
            if self.target_epsilon > self.epsilon_max:
                raise ConfigError(
                    f"dp.target_epsilon={self.target_epsilon} exceeds dp.epsilon_max="
                    f"{self.epsilon_max}: the server would refuse the last rounds; raise "
                    "epsilon_max or lower target_epsilon"
                )
        if self.noise_multiplier is not None and not (
            _finite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise bad("noise_multiplier", "a finite number > 0")
        if not (_finite(self.clip_norm) and self.clip_norm > 0):
            raise bad("clip_norm", "a finite number > 0 (the whole-update L2 clip S)")
        if self.noise not in NOISE_KINDS:
            raise bad("noise", f"one of {NOISE_KINDS}")
        if not (isinstance(self.min_survivors, int) and self.min_survivors >= 3):
            raise bad("min_survivors", "an integer >= 3 (t_min; secure aggregation needs 3)")

    @property
    def user_level(self) -> bool:
        """Whether rounds carry user-level distributed DP noise."""
        return self.target_epsilon is not None or self.noise_multiplier is not None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class QuantSettings:
    """Per-group clips for secure aggregation (weighted deltas and prior statistics)."""

    delta_clip: float = 256.0
    prior_clip: float = 65536.0


@dataclass(frozen=True)
class LimitSettings:
    """How much of the server one client, and all clients together, may hold (``[limits]``).

    Every gRPC call holds a server worker thread until it returns, so without these one client
    could open streams that never finish and starve every other client (SECURITY.md, issue 14).
    Every gRPC call is an HTTP/2 stream, so the stream counts cover unary calls too.

    Attributes:
        stream_deadline_s: a Submit or FetchModel stream still running after this many seconds
            is cut with DEADLINE_EXCEEDED; it must cover the largest honest upload or download
            on the slowest link a client may have.
        max_streams_per_peer: concurrent calls of one client certificate; the excess is refused
            at once with RESOURCE_EXHAUSTED. An honest client makes one call at a time (two
            while a retry overlaps a call the server has not finished yet).
        max_streams: concurrent calls in all, which is also the number of worker threads, so no
            call waits in a queue; the excess is refused at once with RESOURCE_EXHAUSTED.
            0: ``max_streams_per_peer`` per registered client plus :data:`AUTO_STREAMS_SLACK`,
            so that clients holding all their slots can never starve another client.
    """

    stream_deadline_s: float = 120.0
    max_streams_per_peer: int = 4
    max_streams: int = 0

    def __post_init__(self) -> None:
        if not (_finite(self.stream_deadline_s) and self.stream_deadline_s > 0):
            raise _bad_limit(self, "stream_deadline_s", "a finite number of seconds > 0")
        if not (_whole(self.max_streams_per_peer) and self.max_streams_per_peer >= 1):
            raise _bad_limit(self, "max_streams_per_peer", "an integer >= 1")
        if not (_whole(self.max_streams) and self.max_streams >= 0):
            raise _bad_limit(self, "max_streams", "an integer >= 0 (0: sized from the registry)")
        if 0 < self.max_streams < self.max_streams_per_peer:
            raise _bad_limit(
                self,
                "max_streams",
                f"0 or >= limits.max_streams_per_peer={self.max_streams_per_peer} (one client "
                "alone could not use its share)",
            )

    def total_streams(self, registered: int) -> int:
        """``max_streams``, or its size for ``registered`` clients when it is 0 (auto)."""
        if self.max_streams:
            return self.max_streams
        return self.max_streams_per_peer * registered + AUTO_STREAMS_SLACK


AUTO_STREAMS_SLACK = 8
"""Health checks and operators' tools on top of the clients' share."""


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_limit(limits: LimitSettings, name: str, expected: str) -> ConfigError:
    return ConfigError(
        f"limits.{name}={getattr(limits, name)!r} is invalid in server.toml: expected {expected}"
    )


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``fedvpa-secure server`` needs."""

    address: str
    run_dir: Path
    registry: Path
    tls: TlsFiles
    rounds: RoundSettings = field(default_factory=RoundSettings)
    dp: DpSettings = field(default_factory=DpSettings)
    quantization: QuantSettings = field(default_factory=QuantSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    checkpoint_dir: Path | None = None
    max_message_mb: int = 64
    run_id: str = "fedvpa-run"

    def __post_init__(self) -> None:
        if not self.dp.user_level:
            return
        r = self.rounds
        if not r.secure or r.alternate_plain:
            raise ConfigError(
                "dp.target_epsilon/noise_multiplier (user-level DP) needs secure aggregation: set "
                "rounds.secure = true and rounds.alternate_plain = false, or remove them"
            )
        if self.dp.min_survivors > r.clients_per_round:
            raise ConfigError(
                f"dp.min_survivors={self.dp.min_survivors} is invalid: expected <= "
                f"rounds.clients_per_round={r.clients_per_round} (no round could reach t_min)"
            )

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.run_dir / "checkpoints"

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MIB


SERVER_TOML_KEYS = (
    "address",
    "run_dir",
    "registry",
    "tls",
    "rounds",
    "dp",
    "quantization",
    "limits",
    "experiment",
    "checkpoint_dir",
    "max_message_mb",
    "run_id",
)
"""Every top-level key of ``server.toml`` (:func:`load_server_settings` reads each)."""


def load_server_settings(path: str | Path) -> ServerSettings:
    """Read and validate ``server.toml`` (relative paths are relative to the file)."""
    raw, rel = read_toml(path, "server config")
    check_keys(raw, SERVER_TOML_KEYS, f"server config {str(path)!r}")
    for section in ("tls", "rounds", "dp", "quantization", "limits", "experiment"):
        if not isinstance(raw.get(section, {}), Mapping):  # before any path is resolved
            raise ConfigError(
                f"server config [{section}] must be a table ([{section}] with keys), not "
                f"{raw[section]!r:.40}"
            )
    tls = raw.get("tls", {})
    check_keys(tls, ("cert", "key", "ca"), "server config [tls]")
    return ServerSettings(
        address=str(raw.get("address", "127.0.0.1:50051")),
        run_dir=rel(raw.get("run_dir", "run"), "run_dir"),
        registry=rel(raw.get("registry"), "registry"),
        tls=TlsFiles(
            rel(tls.get("cert"), "tls.cert"),
            rel(tls.get("key"), "tls.key"),
            rel(tls.get("ca"), "tls.ca"),
        ),
        rounds=_dataclass_from_dict(RoundSettings, raw.get("rounds", {}), "rounds"),
        dp=_dataclass_from_dict(DpSettings, raw.get("dp", {}), "dp"),
        quantization=_dataclass_from_dict(
            QuantSettings, raw.get("quantization", {}), "quantization"
        ),
        limits=_dataclass_from_dict(LimitSettings, raw.get("limits", {}), "limits"),
        experiment=experiment_from_dict(raw.get("experiment", {})),
        checkpoint_dir=rel(raw["checkpoint_dir"], "checkpoint_dir")
        if "checkpoint_dir" in raw
        else None,
        max_message_mb=int(raw.get("max_message_mb", 64)),
        run_id=str(raw.get("run_id", "fedvpa-run")),
    )
