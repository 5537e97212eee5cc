"""The README's test command on a machine without ../shared or redis-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's tests and config alone in a directory (no ../shared beside it)."""
    root = tmp_path_factory.mktemp("fresh") / "extauthz"
    root.mkdir()
    shutil.copytree(REPO / "tests", root / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def run_pytest(clone: Path, *args: str, ci: bool, path: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO / "src")
    if ci:
        env["CI"] = "true"
    if path is not None:
        env["PATH"] = path
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
        *args,
    ]
    done = subprocess.run(
        command, cwd=clone, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return done.returncode, done.stdout + done.stderr


GOLDEN_MODULES = ("tests/test_policy_differential.py", "tests/test_policy_envoy_rbac.py")


def test_golden_tests_skip_without_shared_and_say_how_to_get_it(clone: Path) -> None:
    """Outside CI the modules that need Istio's golden data skip, naming where it comes from."""
    code, out = run_pytest(clone, *GOLDEN_MODULES, ci=False)
    assert code == pytest.ExitCode.NO_TESTS_COLLECTED, out  # both modules skipped whole
    assert "2 skipped" in out
    assert "github.com/istio/istio" in out
    assert "../shared/testdata/istio-authz/http" in out


def test_golden_tests_fail_without_shared_in_ci(clone: Path) -> None:
    """With CI=true the missing golden data is an error, not a skip."""
    code, out = run_pytest(clone, *GOLDEN_MODULES, ci=True)
    assert code != 0
    assert "required when CI=true" in out


@pytest.fixture
def path_without_redis(tmp_path: Path) -> str:
    """A PATH holding only this Python (no redis-server, no redis-cli)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


def test_redis_tests_skip_without_redis_server(clone: Path, path_without_redis: str) -> None:
    """Outside CI the Redis tests skip without redis-server, saying how to install it."""
    code, out = run_pytest(clone, "tests/test_redis_versions.py", ci=False, path=path_without_redis)
    assert code == 0, out
    assert "3 skipped" in out
    assert "redis-server and redis-cli are not on PATH" in out


def test_redis_tests_fail_without_redis_server_in_ci(clone: Path, path_without_redis: str) -> None:
    """With CI=true a missing redis-server fails the Redis tests."""
    code, out = run_pytest(clone, "tests/test_redis_versions.py", ci=True, path=path_without_redis)
    assert code != 0
    assert "3 error" in out
    assert "required when CI=true" in out
