"""The gRPC server's user-level DP: settings, t_min aborts, write-ahead record, client checks."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedvpa_secure.client.user_dp import check_share, noisy_layout, privatize
from fedvpa_secure.errors import AbortRound, BudgetExceededError, ConfigError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.server.coordinator import Coordinator, Hooks
from fedvpa_secure.server.settings import (
    DpSettings,
    QuantSettings,
    RoundSettings,
    load_server_settings,
)
from fedvpa_secure.server.user_dp import ServerUserDP, update_dim
from fedvpa_secure.train.secure_aggregation import NoisyLayout
from fedvpa_secure.transport.secure_update import layout_for
from privacy import BudgetPolicy, PersistentAccountant

SPEC = {
    "delta/w": ((8,), "<f4"),
    "prior/n": ((2,), "<f8"),
    "prior/v": ((2,), "<f8"),
    "weight": ((1,), "<f8"),
}


def _ledger(tmp: Path, epsilon_max: float = 8.0) -> PersistentAccountant:
    return PersistentAccountant.open(
        tmp / "server.ledger.jsonl",
        run_id="t",
        actor="server",
        unit="user",
        budget=BudgetPolicy(epsilon_max, 1e-5),
        accountant="rdp",
    )


def _user_dp(tmp: Path, *, t_min: int = 3, epsilon_max: float = 8.0) -> ServerUserDP:
    return ServerUserDP(
        DpSettings(target_epsilon=4.0, min_survivors=t_min, epsilon_max=epsilon_max),
        _ledger(tmp, epsilon_max),
        rounds=3,
        sample_rate=1.0,
        max_clients=4,
    )


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": -1.0}, "dp.target_epsilon=-1.0 is invalid"),
        ({"target_epsilon": 9.0}, "exceeds dp.epsilon_max=8.0"),
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, "both set"),
        ({"noise_multiplier": 0.0}, "dp.noise_multiplier=0.0 is invalid"),
        ({"target_epsilon": 1.0, "clip_norm": 0.0}, "dp.clip_norm=0.0 is invalid"),
        ({"target_epsilon": 1.0, "noise": "laplace"}, "dp.noise='laplace' is invalid"),
        ({"target_epsilon": 1.0, "min_survivors": 2}, "dp.min_survivors=2 is invalid"),
        ({"accountant": "gdp"}, "dp.accountant='gdp' is invalid"),
    ],
)
def test_dp_settings_name_the_bad_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        DpSettings(**kwargs)


def test_dp_settings_off_by_default() -> None:
    assert not DpSettings().user_level
    assert DpSettings(target_epsilon=2.0).user_level
    assert DpSettings(noise_multiplier=1.0).user_level


def _write_toml(tmp: Path, dp: str, rounds: str = "") -> Path:
    path = tmp / "server.toml"
    path.write_text(
        'registry = "r.json"\n[tls]\ncert = "a"\nkey = "b"\nca = "c"\n'
        f"[rounds]\nclients_per_round = 4\n{rounds}\n[dp]\n{dp}\n"
    )
    return path


def test_server_toml_turns_user_dp_on(tmp_path: Path) -> None:
    dp = 'target_epsilon = 4.0\nclip_norm = 0.5\nnoise = "skellam"\nmin_survivors = 4\n'
    settings = load_server_settings(_write_toml(tmp_path, dp))
    assert settings.dp.user_level
    assert (settings.dp.clip_norm, settings.dp.noise, settings.dp.min_survivors) == (
        0.5,
        "skellam",
        4,
    )


def test_server_toml_refuses_user_dp_without_secure_aggregation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs secure aggregation"):
        load_server_settings(_write_toml(tmp_path, "target_epsilon = 4.0", "secure = false"))
    with pytest.raises(ConfigError, match=r"dp\.min_survivors=5 is invalid"):
        load_server_settings(_write_toml(tmp_path, "target_epsilon = 4.0\nmin_survivors = 5"))
    with pytest.raises(ConfigError, match="unknown key"):
        load_server_settings(_write_toml(tmp_path, "target_epsilon = 4.0\nsigma = 1.0"))


def test_noise_multiplier_is_turned_into_its_epsilon(tmp_path: Path) -> None:
    loose = ServerUserDP(
        DpSettings(noise_multiplier=2.0, epsilon_max=50.0),
        _ledger(tmp_path, 50.0),
        rounds=3,
        sample_rate=1.0,
        max_clients=4,
    )
    _, plan = loose.round_config(4, SPEC, 0)
    assert plan.effective_noise_multiplier >= 2.0 * 0.99
    with pytest.raises(ConfigError, match=r"above dp\.epsilon_max"):
        ServerUserDP(
            DpSettings(noise_multiplier=0.3, epsilon_max=1.0),
            _ledger(tmp_path / "b", 1.0),
            rounds=50,
            sample_rate=1.0,
            max_clients=4,
        )


# -- the plan and the t_min abort -----------------------------------------------------------------


def test_round_config_raises_threshold_to_t_min_and_refuses_small_rounds(tmp_path: Path) -> None:
    dp = _user_dp(tmp_path, t_min=4)
    config, plan = dp.round_config(4, SPEC, 0)
    assert config.threshold == 4 and plan.min_survivors == 4
    assert plan.dim == update_dim(SPEC) == 12
    with pytest.raises(AbortRound, match="fewer than t_min=4"):
        dp.round_config(3, SPEC, 1)


def test_round_below_min_survivors_aborts_without_a_ledger_entry(tmp_path: Path) -> None:
    dp = _user_dp(tmp_path)
    _, plan = dp.round_config(4, SPEC, 0)
    with pytest.raises(AbortRound, match="2 survivors < t_min=3"):
        dp.before_unmask(0, "r00000-a000", ["c000", "c001"], plan)
    assert len(dp.ledger.ledger.entries) == 0
    dp.before_unmask(0, "r00000-a001", ["c000", "c001", "c002"], plan)
    (entry,) = dp.ledger.ledger.entries
    assert entry.event == plan.round_event(1) and entry.participant_count == 3


def test_a_round_over_budget_is_refused(tmp_path: Path) -> None:
    dp = _user_dp(tmp_path, epsilon_max=4.0)
    _, plan = dp.round_config(4, SPEC, 0)
    for r in range(3):
        dp.before_unmask(r, f"r{r}", ["a", "b", "c"], plan)
    with pytest.raises(BudgetExceededError, match="server refuses round 4"):
        dp.before_unmask(3, "r3", ["a", "b", "c"], plan)


class _Stage(enum.Enum):
    COLLECT_MASKED = 1
    COLLECT_UNMASK = 2


class FakeSession:
    """Two stages: masked inputs (fixes U3), then unmasking; notes what the ledger held."""

    def __init__(self, u3: tuple[str, ...], ledger: PersistentAccountant) -> None:
        self.u3 = u3
        self.ledger = ledger
        # the one part of ServerSession.config the coordinator reads (its straggler quorum)
        self.config = SimpleNamespace(threshold=len(u3))
        self.survivors: tuple[str, ...] = ()
        self.stage = _Stage.COLLECT_MASKED
        self.entries_at_unmask: int | None = None
        self.result = None

    def start(self) -> dict:
        return {"c000": object()}

    def pending(self) -> frozenset:
        return frozenset()

    def close_stage(self) -> dict:
        if self.stage is _Stage.COLLECT_MASKED:
            self.survivors = self.u3
            self.stage = _Stage.COLLECT_UNMASK
            return {u: object() for u in self.u3}  # the unmask requests
        self.entries_at_unmask = len(self.ledger.ledger.entries)
        raise AbortRound("stop here: the test only checks the order")


def _coordinator(dp: ServerUserDP) -> Coordinator:
    hooks = Hooks(
        global_state=dict,
        update_spec=lambda: dict(SPEC),
        tau=lambda r: 1.0,
        apply_sums=lambda r, s, o: None,
        persist_attempt=lambda r, a: None,
    )
    coordinator = Coordinator(
        registry={},
        rounds=RoundSettings(clients_per_round=4),
        quant=QuantSettings(),
        hooks=hooks,
        user_dp=dp,
    )
    coordinator._deliver = lambda *a, **k: None  # type: ignore[method-assign]
    coordinator._wait_stage = lambda *a, **k: None  # type: ignore[method-assign]
    return coordinator


def test_coordinator_aborts_below_t_min_before_any_unmask_request(tmp_path: Path) -> None:
    dp = _user_dp(tmp_path)
    _, plan = dp.round_config(4, SPEC, 0)
    session = FakeSession(("c000", "c001"), dp.ledger)
    task = pb.Task(kind=pb.Task.TRAIN, round_id="r00000-a000")
    with pytest.raises(AbortRound, match="t_min=3"):
        _coordinator(dp)._secure_round(task, session, SPEC, {}, plan)  # type: ignore[arg-type]
    assert session.entries_at_unmask is None, "the unmask stage must never be reached"
    assert len(dp.ledger.ledger.entries) == 0


def test_coordinator_records_before_unmasking(tmp_path: Path) -> None:
    dp = _user_dp(tmp_path)
    _, plan = dp.round_config(4, SPEC, 0)
    session = FakeSession(("c000", "c001", "c002"), dp.ledger)
    task = pb.Task(kind=pb.Task.TRAIN, round_id="r00000-a000")
    with pytest.raises(AbortRound, match="stop here"):
        _coordinator(dp)._secure_round(task, session, SPEC, {}, plan)  # type: ignore[arg-type]
    assert session.entries_at_unmask == 1  # written before the unmask stage closed


# -- the client's half ----------------------------------------------------------------------------


def test_client_refuses_invalid_noise_parameters() -> None:
    good = pb.UserDpShare(clip_norm=1.0, noise="skellam", local_sigma=3.0, min_survivors=3)
    check_share(good, "r")
    for bad in (
        pb.UserDpShare(clip_norm=1.0, noise="skellam", local_sigma=0.0, min_survivors=3),
        pb.UserDpShare(clip_norm=float("nan"), noise="skellam", local_sigma=3.0, min_survivors=3),
        pb.UserDpShare(clip_norm=1.0, noise="none", local_sigma=3.0, min_survivors=3),
        pb.UserDpShare(),
    ):
        with pytest.raises(AbortRound, match="user-level DP parameters are invalid"):
            check_share(bad, "r")


def test_client_clips_and_noises_in_the_ring(tmp_path: Path) -> None:
    dp = _user_dp(tmp_path)
    config, plan = dp.round_config(4, SPEC, 0)
    share = dp.share_message(plan)
    update = {
        "delta/w": np.full(8, 30.0, np.float32),
        "prior/n": np.array([1.0, 3.0]),
        "prior/v": np.array([0.5, 0.25]),
        "weight": np.array([2.0]),
    }
    clipped = privatize(update, share)
    norm = np.sqrt(sum(float(np.sum(np.square(v))) for k, v in clipped.items() if k != "weight"))
    assert norm <= 1.0 + 1e-6 and clipped["weight"][0] == 1.0
    plain = layout_for({k: v for k, v in SPEC.items() if k != "weight"}, config)
    noisy = noisy_layout(plain, share)
    assert isinstance(noisy, NoisyLayout) and noisy.digest == plain.digest
    assert noisy.local_sigma == plan.local_sigma and noisy.noise == plan.noise
