"""The compiled build (mypyc), built once per test session worker for tests/test_compiled.py.

The wheel is built the way the Dockerfile builds it (``EXTAUTHZ_COMPILE=1 pip wheel``, from a
copy of the build inputs, so nothing is written into the repository) and installed with
``pip install --target`` into a temporary directory: a process sees the compiled package only
when that directory leads its ``PYTHONPATH`` (the runtime dependencies come from this Python's
site-packages). The system's and the repository's copies are never touched.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers import REPO, require

# What the Dockerfile's build context admits for the wheel (see .dockerignore).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "src")


def c_compiler() -> str | None:
    """The C compiler this Python's extensions are built with, if it is installed."""
    cc = shlex.split(str(sysconfig.get_config_var("CC") or "cc"))
    return shutil.which(cc[0]) if cc else None


def python_headers() -> bool:
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


def require_toolchain() -> None:
    """Skip without a C compiler, Python's headers or mypyc (with CI=true: fail)."""
    require(c_compiler() is not None, "no C compiler: the compiled build needs gcc (or cc)")
    require(python_headers(), "no Python.h: the compiled build needs Python's headers")
    require(
        importlib.util.find_spec("mypyc") is not None,
        "mypyc is not installed: pip install -e '.[compile]'",
    )


def build_and_install(workdir: Path) -> Path:
    """Build the compiled wheel in ``workdir`` and install it there; the directory to put
    first on ``PYTHONPATH``."""
    source = workdir / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.so", "*.egg-info")
    for name in BUILD_INPUTS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=ignore)
        else:
            shutil.copy2(src, source / name)
    wheels = workdir / "wheels"
    # C at -O0: the same code as the Dockerfile's -O3 build, in about half the compiler's
    # time (the suite has ten minutes on two cores)
    env = {**os.environ, "EXTAUTHZ_COMPILE": "1", "EXTAUTHZ_COMPILE_OPT": "0"}
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", str(source), "-w", str(wheels)],
        check=True, timeout=1200, cwd=workdir, env=env,
    )  # fmt: skip
    (wheel,) = wheels.glob("extauthz-*.whl")
    target = workdir / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, timeout=300, cwd=workdir, env=env,
    )  # fmt: skip
    return target
