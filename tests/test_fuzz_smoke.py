"""Each fuzz harness (tests/fuzz) runs a bounded number of inputs without a finding."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from extauthz.documents import load_documents
from extauthz.errors import DocumentError
from tests.helpers import REPO, require

pytestmark = pytest.mark.fuzz

CORPUS = REPO / "tests" / "fuzz" / "corpus"
ATHERIS_HINT = (
    "atheris is not installed: the test extra brings it on Linux x86-64 (its only wheels); "
    "elsewhere pip install atheris needs clang with libFuzzer"
)

HARNESSES = ["check", "identity", "pathnorm", "documents", "jwt"]
RUNS = 3000


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_finds_nothing_in_a_short_run(name: str, tmp_path: Path) -> None:
    """A few thousand mutated inputs from the seed corpus: no exception, no broken property."""
    require(importlib.util.find_spec("atheris") is not None, ATHERIS_HINT)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        "-m",
        f"tests.fuzz.fuzz_{name}",
        f"-runs={RUNS}",
        "-max_total_time=60",
        "-timeout=20",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
        str(CORPUS / name),
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"Done {RUNS} runs" in output, output[-4000:]
    assert not list(tmp_path.glob("crash-*"))


def test_self_referencing_yaml_alias_is_a_document_error() -> None:
    """A YAML alias nested in its own anchor is refused as a DocumentError naming the file."""
    with pytest.raises(DocumentError, match=r"loop\.yaml:1: .*alias inside its own anchor"):
        load_documents(b"b: &b [*b]\n", "loop.yaml")


def test_deeply_nested_yaml_is_a_document_error() -> None:
    """Nesting deeper than any policy needs is refused before it can exhaust the stack."""
    with pytest.raises(DocumentError, match=r"deep\.yaml:1: .*nested deeper than"):
        load_documents(b"a: " + b"[" * 20000 + b"]" * 20000, "deep.yaml")
