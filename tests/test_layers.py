"""The layer contracts in pyproject.toml, checked by ``lint-imports`` as CI runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as m; m()"]


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's contracts over the package under ``src``."""
    return subprocess.run(
        [*LINT, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(src)},
    )


def test_imports_follow_the_layers() -> None:
    """Every module imports only from the layers below its own, and deciding needs no I/O
    library."""
    out = lint_imports(REPO / "src")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_import_against_the_flow_fails(tmp_path: Path) -> None:
    """A low module importing a higher one (response -> pipeline) breaks the layers contract,
    and the message names the contract and both modules."""
    shutil.copytree(REPO / "src" / "extauthz", tmp_path / "extauthz")
    response = tmp_path / "extauthz" / "response.py"
    text = response.read_text()
    mutated = text.replace("from extauthz.outcome import", "from extauthz.pipeline import")
    assert mutated != text, "response.py no longer imports from extauthz.outcome"
    response.write_text(mutated)
    out = lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Layers (top imports bottom, never the reverse) BROKEN" in out.stdout
    assert "extauthz.response -> extauthz.pipeline" in out.stdout


def test_a_module_without_a_layer_fails(tmp_path: Path) -> None:
    """A new module that is not placed in a layer fails the exhaustive contract."""
    shutil.copytree(REPO / "src" / "extauthz", tmp_path / "extauthz")
    (tmp_path / "extauthz" / "stray.py").write_text('"""A module nobody placed."""\n')
    out = lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "stray" in out.stdout
