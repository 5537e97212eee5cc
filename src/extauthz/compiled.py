"""The optional compiled build: which modules mypyc compiles, and whether this copy is one.

``setup.py`` compiles ``MODULES`` when ``EXTAUTHZ_COMPILE=1`` is set (it reads the tuple
from this file's source, without importing the package). Every other module, and every
module of the default (pure) install, stays Python; the compiled modules behave the same.
"""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ["COMPILED", "MODULES", "PURE", "build"]

# The hot path of a Check, as paths relative to the project root (what mypycify takes).
# Kept Python: servicer.py (grpc.aio calls its coroutine, which only calls answer.Answer),
# and everything that runs only at load time or in the CLI.
MODULES: Final = (
    "src/extauthz/model.py",
    "src/extauthz/wire.py",
    "src/extauthz/decode.py",
    "src/extauthz/pathnorm.py",
    "src/extauthz/identity.py",
    "src/extauthz/datasets.py",
    "src/extauthz/policy/matchers.py",
    "src/extauthz/policy/paths.py",
    "src/extauthz/policy/spiffe.py",
    "src/extauthz/policy/index.py",
    "src/extauthz/policy/compile.py",
    "src/extauthz/policy/engine.py",
    "src/extauthz/authn/tokens.py",
    "src/extauthz/authn/cache.py",
    "src/extauthz/authn/verify.py",
    "src/extauthz/authn/authenticator.py",
    "src/extauthz/tenancy.py",
    "src/extauthz/outcome.py",
    "src/extauthz/pipeline.py",
    "src/extauthz/response.py",
    "src/extauthz/telemetry_counts.py",
    "src/extauthz/decisionlog.py",
    "src/extauthz/answer.py",
)

COMPILED: Final = "compiled (mypyc)"
PURE: Final = "pure Python"


def module_name(path: str) -> str:
    """``src/extauthz/policy/engine.py`` -> ``extauthz.policy.engine``."""
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def build() -> str:
    """``COMPILED`` when this copy's listed modules are extension modules, else ``PURE``.

    Reads where the first listed module would load from, without importing it."""
    spec = importlib.util.find_spec(module_name(MODULES[0]))
    origin = "" if spec is None or spec.origin is None else spec.origin
    return COMPILED if origin.endswith(".so") else PURE
