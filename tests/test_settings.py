"""Settings: one default, help text and variable per setting, for serve and check alike."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from extauthz.cli import build_parser
from extauthz.pathnorm import PathNormalization
from extauthz.settings import (
    FLAGS,
    METRICS_PORT,
    Settings,
    SettingsError,
    env_name,
    flag_name,
    parse_hostport,
    settings_from_flags,
)
from tests.helpers import REPO

INTERNAL = {"reuse_port"}  # set by the supervisor for its workers, never by a flag
POLICIES = str(REPO / "policies")
PROXY = "spiffe://cluster.local/ns/istio-system/sa/ingress"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def options_of(command: str, *argv: str) -> Settings:
    from extauthz.cli._flags import settings_from_args

    extra = ["--request", "-"] if command == "check" else []
    return settings_from_args(parse(command, *extra, *argv), command)


def test_every_setting_has_a_flag() -> None:
    """Each Settings field but the internal ones is a flag of serve, in FLAGS."""
    names = {f.name for f in fields(Settings)} - INTERNAL
    assert set(FLAGS) == names


def test_serve_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve without flags or variables runs with Settings' defaults (metrics: port 9464)."""
    for name in FLAGS:
        monkeypatch.delenv(env_name(flag_name(name)), raising=False)
    monkeypatch.chdir(REPO)
    settings = options_of("serve")
    host = Settings().listen.rpartition(":")[0]
    assert settings == Settings(metrics_listen=f"{host}:{METRICS_PORT}")


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_flag_reads_its_variable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The flag's help names its EXTAUTHZ_* variable, derived from the flag's name."""
    var = env_name(flag_name(name))
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    help_text = commands.choices["serve"].format_help()
    assert var in " ".join(help_text.split())


def test_check_takes_every_flag_that_changes_a_decision() -> None:
    """check accepts the trusted-proxy flags and builds the server's CheckOptions from them."""
    argv = [
        "--policies", POLICIES,
        "--trusted-proxy-principal", PROXY,
        "--trusted-proxy-cidr", "10.0.0.0/8",
        "--trusted-proxy-xfcc", "APPEND_FORWARD",
        "--xff-num-trusted-hops", "2",
        "--path-normalization", "MERGE_SLASHES",
        "--jwks-allow-private",
    ]  # fmt: skip
    check, serve = options_of("check", *argv), options_of("serve", *argv)
    deciding = [n for n, f in FLAGS.items() if f.check]
    assert [getattr(check, n) for n in deciding] == [getattr(serve, n) for n in deciding]
    assert check.trusted_proxy_principals == (PROXY,)
    assert check.trusted_proxy_cidrs == ("10.0.0.0/8",)
    assert check.check_options().trusted_proxies
    assert check.check_options().trusted_proxies.xfcc == "APPEND_FORWARD"
    assert check.check_options().xff_num_trusted_hops == 2
    assert check.path_normalization is PathNormalization.MERGE_SLASHES
    assert check.jwks_allow_private is True
    assert {n for n, f in FLAGS.items() if f.check} >= {
        "policies", "xff_num_trusted_hops", "trusted_proxy_principals", "trusted_proxy_cidrs",
        "trusted_proxy_xfcc", "path_normalization", "jwks_ca_file", "jwks_allow_private",
    }  # fmt: skip


def test_at_is_a_flag_of_check_only() -> None:
    """--at fixes the instant of an offline decision; the server has no such flag."""
    args = parse("check", "--request", "-", "--at", "2026-03-29T01:30:00+02:00")
    assert args.at.isoformat() == "2026-03-28T23:30:00+00:00"
    with pytest.raises(SystemExit):
        parse("serve", "--at", "2026-03-29T01:30:00Z")


def test_unknown_xfcc_mode_is_refused() -> None:
    """--trusted-proxy-xfcc takes only the modes the identity code implements."""
    with pytest.raises(SystemExit):
        parse("check", "--request", "-", "--trusted-proxy-xfcc", "FORWARD_ONLY")
    with pytest.raises(SettingsError, match="--trusted-proxy-xfcc"):
        settings_from_flags({"policies": POLICIES, "trusted_proxy_xfcc": "FORWARD_ONLY"})


def test_check_variables_are_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same EXTAUTHZ_* variable configures serve and check."""
    monkeypatch.setenv("EXTAUTHZ_TRUSTED_PROXY_CIDR", "192.168.0.0/16, 10.0.0.0/8")
    monkeypatch.setenv("EXTAUTHZ_POLICIES", POLICIES)
    monkeypatch.setenv("EXTAUTHZ_TRUSTED_PROXY_XFCC", "APPEND_FORWARD")
    monkeypatch.setenv("EXTAUTHZ_JWKS_ALLOW_PRIVATE", "true")
    for command in ("check", "serve"):
        settings = options_of(command)
        assert settings.trusted_proxy_cidrs == ("192.168.0.0/16", "10.0.0.0/8")
        assert settings.trusted_proxy_xfcc == "APPEND_FORWARD"
        assert settings.jwks_allow_private is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, f"127.0.0.1:{METRICS_PORT}"), ("", None), ("off", None), ("[::1]:9", "[::1]:9")],
)
def test_metrics_listen(value: str | None, expected: str | None) -> None:
    """Unset: the listen host, port 9464; empty or off: no endpoint; else as given."""
    values = {"listen": "127.0.0.1:9191", "metrics_listen": value, "policies": POLICIES}
    assert settings_from_flags(values).metrics_listen == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"listen": "nope"}, "--listen (EXTAUTHZ_LISTEN): expected HOST:PORT"),
        ({"workers": "0"}, "--workers must be >= 1"),
        ({"workers": "many"}, "invalid literal for int()"),
        ({"trusted_proxy_principals": ["not-spiffe"]}, "--trusted-proxy-principal"),
        ({"trusted_proxy_cidrs": ["10.0.0.0/33"]}, "--trusted-proxy-cidr"),
        ({"decision_log_sample": "2"}, "--decision-log-sample"),
        ({"log_buffer": "0"}, "--log-buffer must be at least 1"),
        ({"policies": "/nonexistent"}, "--policies (EXTAUTHZ_POLICIES)"),
    ],
)
def test_invalid_settings_name_the_flag(values: dict[str, object], message: str) -> None:
    """An invalid value fails with a SettingsError naming the flag."""
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from_flags({"policies": POLICIES, **values})


def test_empty_policies_means_the_default(tmp_path: Path) -> None:
    """An empty --policies (an empty variable) is the default directory, not the cwd."""
    values = {"policies": "", "redis_url": "redis://localhost"}
    assert settings_from_flags(values).policies == Path("policies")


def test_switches_are_booleans() -> None:
    """A bool setting given as a switch (or its variable) becomes a bool, unset its default."""
    assert settings_from_flags({"policies": POLICIES, "reuse_port": True}).reuse_port is True
    assert settings_from_flags({"policies": POLICIES, "reuse_port": None}).reuse_port is False


def test_parse_hostport() -> None:
    """HOST:PORT with an empty host binds every address; brackets are stripped."""
    assert parse_hostport(":80", "listen") == ("0.0.0.0", 80)
    assert parse_hostport("[::1]:80", "listen") == ("::1", 80)
