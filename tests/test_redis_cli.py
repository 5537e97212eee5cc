"""``extauthz policy`` against a real Redis: apply, get, list, diff, delete, rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extauthz.cli import main
from tests.helpers import REPO, RedisServer, redis_cli, redis_fixture, tenant_documents

pytestmark = pytest.mark.redis


redis = redis_fixture("module")


@pytest.fixture
def url(redis: RedisServer) -> str:
    redis_cli(redis.port, "flushall")
    return redis.url


def policy(*args: str) -> int:
    return main(["policy", *args])


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_apply_then_get_round_trips(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What apply stored, get prints back as YAML that applies again unchanged."""
    assert policy("apply", "-f", str(REPO / "policies"), "--redis-url", url) == 0
    capsys.readouterr()
    assert policy("get", "acme", "--redis-url", url) == 0
    out = capsys.readouterr().out
    assert out.startswith("# tenant acme version 1\n")
    assert "name: frontend-to-orders" in out
    again = write(tmp_path, "acme", out)
    assert policy("apply", "-f", str(again), "--redis-url", url) == 0
    assert capsys.readouterr().out == "unchanged: tenant acme version 1\n"


def test_list_shows_tenants_versions_and_policy_counts(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """list names every tenant with its version and number of policies."""
    policy("apply", "-f", str(REPO / "policies"), "--redis-url", url)
    capsys.readouterr()
    assert policy("list", "--output", "json", "--redis-url", url) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["tenant"], r["version"], r["policies"]) for r in rows] == [
        ("acme", 1, 5),
        ("globex", 1, 3),
        ("initech", 1, 2),
    ]


def test_each_apply_is_a_new_version(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changed documents get the next version; history keeps the earlier one."""
    policy(
        "apply",
        "-f",
        str(write(tmp_path, "a", tenant_documents("t1", "a.test"))),
        "--redis-url",
        url,
    )
    changed = write(tmp_path, "a", tenant_documents("t1", "a.test", ["/v2/*"]))
    capsys.readouterr()
    assert policy("apply", "-f", str(changed), "--redis-url", url) == 0
    assert capsys.readouterr().out == "applied: tenant t1 version 2\n"
    assert policy("history", "t1", "--redis-url", url) == 0
    assert capsys.readouterr().out.split() == ["2", "current", "1"]


def test_stale_expected_version_is_a_conflict(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer that read version 1 cannot overwrite version 2 (exit 3, nothing written)."""
    path = write(tmp_path, "a", tenant_documents("t1", "a.test"))
    policy("apply", "-f", str(path), "--redis-url", url)
    policy(
        "apply",
        "-f",
        str(write(tmp_path, "b", tenant_documents("t1", "a.test", ["/b"]))),
        "--redis-url",
        url,
    )
    stale = write(tmp_path, "c", tenant_documents("t1", "a.test", ["/c"]))
    capsys.readouterr()
    assert policy("apply", "-f", str(stale), "--expected-version", "1", "--redis-url", url) == 3
    assert "is at version 2, not the expected 1" in capsys.readouterr().err
    policy("get", "t1", "--redis-url", url)
    assert "/b" in capsys.readouterr().out


def test_current_expected_version_writes(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer holding the current version succeeds."""
    policy(
        "apply",
        "-f",
        str(write(tmp_path, "a", tenant_documents("t1", "a.test"))),
        "--redis-url",
        url,
    )
    fresh = write(tmp_path, "b", tenant_documents("t1", "a.test", ["/b"]))
    assert policy("apply", "-f", str(fresh), "--expected-version", "1", "--redis-url", url) == 0
    assert "applied: tenant t1 version 2" in capsys.readouterr().out


def test_invalid_documents_never_reach_redis(
    url: str, redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy the compiler refuses is reported with its field; no key is written."""
    bad = tenant_documents("t1", "a.test").replace("action: ALLOW", "action: PERMIT")
    assert policy("apply", "-f", str(write(tmp_path, "bad", bad)), "--redis-url", url) == 1
    err = capsys.readouterr().err
    assert "spec.action" in err
    assert "nothing was written" in err
    assert redis_cli(redis.port, "dbsize").strip() == "0"


def test_routing_conflict_with_another_tenant_is_refused(
    url: str, redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant claiming a host another tenant in Redis already matches is not written."""
    policy(
        "apply",
        "-f",
        str(write(tmp_path, "a", tenant_documents("t1", "a.test"))),
        "--redis-url",
        url,
    )
    thief = write(tmp_path, "b", tenant_documents("t2", "a.test"))
    capsys.readouterr()
    assert policy("apply", "-f", str(thief), "--redis-url", url) == 1
    assert "both match host='a.test'" in capsys.readouterr().err
    assert redis_cli(redis.port, "exists", "extauthz:{t2}:current").strip() == "0"


def test_delete_then_rollback_restores_the_tenant(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A delete is a version of its own; rollback brings the last documents back."""
    policy(
        "apply",
        "-f",
        str(write(tmp_path, "a", tenant_documents("t1", "a.test"))),
        "--redis-url",
        url,
    )
    assert policy("delete", "t1", "--redis-url", url) == 0
    assert policy("get", "t1", "--redis-url", url) == 1
    capsys.readouterr()
    assert policy("rollback", "t1", "--redis-url", url) == 0
    assert capsys.readouterr().out == "rolled back: tenant t1 to version 1 as version 3\n"
    policy("get", "t1", "--redis-url", url)
    assert capsys.readouterr().out.startswith("# tenant t1 version 3")


def test_rollback_to_a_chosen_version(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rollback --to V stores version V's documents as the next version."""
    for paths in (["/one"], ["/two"], ["/three"]):
        doc = write(tmp_path, "a", tenant_documents("t1", "a.test", paths))
        policy("apply", "-f", str(doc), "--redis-url", url)
    assert policy("rollback", "t1", "--to", "1", "--redis-url", url) == 0
    capsys.readouterr()
    policy("get", "t1", "--redis-url", url)
    out = capsys.readouterr().out
    assert out.startswith("# tenant t1 version 4")
    assert "/one" in out


def test_history_keeps_only_the_last_versions(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --keep-versions 2, versions older than the last two are dropped."""
    for i in range(5):
        doc = write(tmp_path, "a", tenant_documents("t1", "a.test", [f"/v{i}"]))
        policy("apply", "-f", str(doc), "--keep-versions", "2", "--redis-url", url)
    capsys.readouterr()
    policy("history", "t1", "--redis-url", url)
    assert capsys.readouterr().out.split() == ["5", "current", "4", "3"]
    assert policy("rollback", "t1", "--to", "1", "--redis-url", url) == 1


def test_diff_shows_what_apply_would_change(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """diff exits 1 and prints a unified diff when the files differ from Redis, 0 when equal."""
    policy(
        "apply",
        "-f",
        str(write(tmp_path, "a", tenant_documents("t1", "a.test"))),
        "--redis-url",
        url,
    )
    capsys.readouterr()
    same = write(tmp_path, "a", tenant_documents("t1", "a.test"))
    assert policy("diff", "-f", str(same), "--redis-url", url) == 0
    assert capsys.readouterr().out == ""
    other = write(tmp_path, "a", tenant_documents("t1", "a.test", ["/new/*"]))
    assert policy("diff", "-f", str(other), "--redis-url", url) == 1
    out = capsys.readouterr().out
    assert "-        - /open/*" in out
    assert "+        - /new/*" in out


def test_unreachable_redis_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """No Redis at the URL: exit 2 with the URL (password masked) in the message."""
    from tests.helpers import free_port

    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    assert policy("list", "--redis-url", url) == 2
    err = capsys.readouterr().err
    assert "user:***@127.0.0.1" in err
    assert "secret" not in err


def test_validate_still_works_offline(capsys: pytest.CaptureFixture[str]) -> None:
    """policy validate needs no Redis."""
    assert policy("validate", str(REPO / "policies")) == 0
    assert "ok: tenant acme" in capsys.readouterr().out
