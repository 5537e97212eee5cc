"""Build hook: the optional mypyc-compiled build (everything else is in pyproject.toml).

    EXTAUTHZ_COMPILE=1 pip wheel --no-build-isolation .    # needs the "compile" extra and gcc

Without ``EXTAUTHZ_COMPILE=1`` this builds the ordinary pure-Python wheel. The modules to
compile are listed once, in ``src/extauthz/compiled.py`` (``MODULES``), read here from the
source so the package is not imported at build time. ``EXTAUTHZ_COMPILE_OPT`` sets the C
compiler's optimization level (default 3).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """The ``MODULES`` tuple of src/extauthz/compiled.py, parsed, not imported."""
    tree = ast.parse((ROOT / "src" / "extauthz" / "compiled.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "MODULES"
            and node.value is not None
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple), "MODULES must be a tuple of paths"
            return [str(v) for v in value]
    raise RuntimeError("src/extauthz/compiled.py defines no MODULES")


def ext_modules() -> list[Any]:
    if os.environ.get("EXTAUTHZ_COMPILE", "") != "1":
        return []
    from mypyc.build import mypycify

    opt = os.environ.get("EXTAUTHZ_COMPILE_OPT", "3")
    os.chdir(ROOT)  # mypycify takes paths relative to the project root
    return list(mypycify(compiled_modules(), opt_level=opt))


setup(ext_modules=ext_modules())
