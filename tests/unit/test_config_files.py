"""The configuration a person writes: example files, typo detection, ``--check``, ``--version``.

The examples in ``examples/`` are what README points at; they must load, and the client's must
spell out exactly the code's default policy (the defaults are defined once, in PrivacyPolicy).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedvpa_secure.cli import main as cli_main
from fedvpa_secure.client.policy import PrivacyPolicy
from fedvpa_secure.client.settings import load_client_settings
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.server.settings import load_server_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_example_client_toml_is_the_default_policy() -> None:
    settings = load_client_settings(EXAMPLES / "client.toml")
    assert settings.policy == PrivacyPolicy()
    assert settings.cert == EXAMPLES / "me" / "client.pem"  # relative to the file


def test_the_example_server_toml_asks_what_a_default_client_accepts() -> None:
    settings = load_server_settings(EXAMPLES / "server.toml")
    policy = PrivacyPolicy()
    r = settings.rounds
    assert r.secure and r.hardened and r.clients_per_round >= policy.min_clients
    assert settings.dp.user_level and settings.dp.min_survivors >= policy.user_min_survivors
    assert settings.dp.target_epsilon <= policy.user_epsilon


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('stat_dir = "s"\n', "'stat_dir' -> did you mean 'state_dir'"),
        ("[dp]\nepsilon = 1.0\n", r"\[dp\] moved into \[policy\]"),
        ("[policy]\nuser_epsilo = 4.0\n", "did you mean 'user_epsilon'"),
        ("[tls]\ncertt = 'x'\n", r"\[tls\] has unknown key"),
    ],
)
def test_a_client_toml_typo_is_named(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "client.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_client_settings(path)


def test_control_a_client_toml_spelled_right_loads(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text(
        'state_dir = "s"\nregistry = "r.json"\n[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
        'identity = "i"\n[policy]\nuser_epsilon = 4.0\n'
    )
    assert load_client_settings(path).policy.user_epsilon == 4.0


def test_server_check_is_ready_once_the_operator_made_its_files(tmp_path: Path, capsys) -> None:
    shutil.copy(EXAMPLES / "server.toml", tmp_path / "server.toml")
    config = str(tmp_path / "server.toml")
    assert cli_main(["server", "--config", config, "--check"]) == 1  # control: nothing made yet
    assert "MISSING" in capsys.readouterr().out
    assert cli_main(["certs", "init", "--out", str(tmp_path / "ca")]) == 0
    capsys.readouterr()
    assert cli_main(["server", "--config", config, "--check"]) == 0
    out = capsys.readouterr().out
    assert "server config is valid" in out and "ready" in out and "MISSING" not in out


def test_client_check_prints_the_policy_and_a_typo_exits_2(tmp_path: Path, capsys) -> None:
    assert cli_main(["client", "--config", str(EXAMPLES / "client.toml"), "--check"]) == 1
    out = capsys.readouterr().out
    assert "hardened only" in out and "MISSING" in out
    bad = tmp_path / "client.toml"
    bad.write_text('stat_dir = "s"\n')
    assert cli_main(["client", "--config", str(bad), "--check"]) == 2
    assert "did you mean 'state_dir'" in capsys.readouterr().err


def test_client_without_server_is_told_what_is_missing(capsys) -> None:
    assert cli_main(["client", "--config", str(EXAMPLES / "client.toml")]) == 2
    assert "--server HOST:PORT and --client-id ID are required" in capsys.readouterr().err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("fedvpa-secure 0.")


def test_help_shows_the_defaults_a_user_should_see(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "record-level DP-SGD target epsilon per client over the run (0: no DP) (default: 8.0)"
        in (text)
    )
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_section_written_as_a_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('rounds = 5\nregistry = "r.json"\n')
    with pytest.raises(ConfigError, match=r"\[rounds\] must be a table"):
        load_server_settings(path)
