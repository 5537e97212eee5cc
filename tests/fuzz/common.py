"""What every harness shares: the corpus folders and the atheris entry point.

Imports nothing of extauthz, so each harness can import it under
``atheris.instrument_imports`` (coverage feedback for extauthz's own code).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent.parent
CORPUS = FUZZ / "corpus"


# Findings already reported, to pass over in a long run: FUZZ_KNOWN=name,name (see README).
KNOWN = frozenset(filter(None, os.environ.get("FUZZ_KNOWN", "").split(",")))


def known(name: str) -> bool:
    return name in KNOWN


class Finding(AssertionError):
    """A property of the harness does not hold for this input."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Finding(message)


def main(name: str, test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input``: libFuzzer flags and corpus folders from the command line.

    Without a folder argument the harness reads (and adds to) its seed corpus
    ``tests/fuzz/corpus/<name>``.
    """
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(str(CORPUS / name))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
