"""The compiled build (mypyc, ``EXTAUTHZ_COMPILE=1``) decides exactly as the pure package.

One wheel is built for the whole file (a minute or two); with ``--dist loadfile`` the file
runs on one pytest-xdist worker, so it is built once per run. Without a C compiler (or
mypyc) the file skips, and fails under CI=true.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

from extauthz.compiled import COMPILED, MODULES, PURE, module_name
from tests.compiled_build import build_and_install, require_toolchain
from tests.helpers import REPO, ServerProcess, check_request

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("compiled")]

EXAMPLES = sorted((REPO / "examples" / "requests").glob("*.json"))
FRONTEND = "spiffe://cluster.local/ns/acme-web/sa/frontend"
# grpc.aio calls servicer.py's coroutine; telemetry.py holds the OpenTelemetry parts: both
# stay Python in the build.
PURE_MODULES = ("extauthz.servicer", "extauthz.telemetry", "extauthz.cli")


@pytest.fixture(scope="module")
def compiled_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_toolchain()
    return build_and_install(tmp_path_factory.mktemp("compiled"))


def env_for(site: Path) -> dict[str, str]:
    """The environment of a process that imports extauthz from ``site`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTAUTHZ_")}
    env["PYTHONPATH"] = str(site)
    return env


def python(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=site, env=env_for(site),
    )  # fmt: skip


def test_listed_modules_are_compiled_and_the_rest_pure(compiled_site: Path) -> None:
    names = [module_name(p) for p in MODULES]
    probe = (
        "import importlib, sys\nfor n in sys.argv[1:]: print(importlib.import_module(n).__file__)"
    )
    result = python(compiled_site, "-c", probe, *names, *PURE_MODULES)
    assert result.returncode == 0, result.stderr
    files = dict(zip([*names, *PURE_MODULES], result.stdout.split(), strict=True))
    for name, file in files.items():
        assert Path(file).is_relative_to(compiled_site), file
        assert file.endswith(".so") == (name in names), (name, file)


def test_version_reports_the_compiled_build(compiled_site: Path) -> None:
    result = python(compiled_site, "-m", "extauthz", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"({COMPILED})"), result.stdout
    assert PURE not in result.stdout


@pytest.fixture(scope="module")
def servers(compiled_site: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The example policies served by the pure package and by the compiled one."""
    args = ["--policies", str(REPO / "policies")]
    pure = ServerProcess(args, env_for(REPO / "src"))
    compiled = ServerProcess(args, env_for(compiled_site))
    try:
        yield pure.wait_serving(), compiled.wait_serving(timeout=60)
    finally:
        pure.stop()
        compiled.stop()


def requests() -> Iterator[tuple[str, external_auth_pb2.CheckRequest]]:
    """The example requests, and variations on the main paths of a Check."""
    for example in EXAMPLES:
        yield example.stem, json_format.Parse(example.read_text(), external_auth_pb2.CheckRequest())
    hosts = ("orders.acme.example.com", "acme.example.com", "globex.example.com", "nowhere.org")
    paths = ("/api/orders?page=2", "/api/orders/../admin", "/admin/stats", "/%2e%2e/x", "/")
    principals = ("", FRONTEND, "spiffe://cluster.local/ns/acme-batch/sa/cron", "spiffe://B@d/x")
    headers: tuple[dict[str, str], ...] = (
        {},
        {"x-internal-override": "1"},
        {"authorization": "Bearer not.a.token"},
    )
    for host in hosts:
        for path in paths:
            for principal in principals:
                for i, extra in enumerate(headers):
                    for method in ("GET", "DELETE"):
                        yield (
                            f"{method} {host}{path} {principal or '-'} h{i}",
                            check_request(
                                method=method,
                                host=host,
                                path=path,
                                principal=principal,
                                headers=extra,
                            ),
                        )


def comparable(response: external_auth_pb2.CheckResponse) -> dict[str, object]:
    """The whole response but its decision id (unique per Check)."""
    out = json_format.MessageToDict(response)
    out.get("dynamicMetadata", {}).pop("decision_id", None)
    return out


def test_compiled_server_answers_like_the_pure_one(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Every request gets the same CheckResponse over gRPC, field for field."""
    pure, compiled = servers
    decisions: set[str] = set()
    for name, request in requests():
        want, got = comparable(pure.check(request)), comparable(compiled.check(request))
        assert got == want, name
        decisions.add(str(want["dynamicMetadata"]["reason"]))  # type: ignore[index]
    assert len(decisions) >= 6, decisions  # the requests reach many different outcomes
    assert f'"build": "{COMPILED}"' in compiled.logs()  # the "serving" line (JSON logs)
    assert f'"build": "{PURE}"' in pure.logs()


# Unit tests that exercise the compiled modules directly (decoder, identity, pipeline, the
# policy engine and its sharing of matchers, the token path, the response, the answer with its
# failure paths, the counts, the decision log and its masking), run against the compiled build.
UNIT_TESTS = (
    "tests/test_policy_sharing.py",
    "tests/test_policy_fields.py",
    "tests/test_pipeline.py",
    "tests/test_decode.py",
    "tests/test_wire.py",
    "tests/test_identity.py",
    "tests/test_pathnorm.py",
    "tests/test_tenancy.py",
    "tests/test_response.py",
    "tests/test_authn_tokens.py",
    "tests/test_response_templates.py",
    "tests/test_servicer.py",
    "tests/test_telemetry_counts.py",
    "tests/test_decision_log.py",
    "tests/test_decision_masking.py",
    "tests/test_decision_record.py",
)


def test_unit_tests_pass_against_the_compiled_build(compiled_site: Path) -> None:
    env = env_for(compiled_site)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
         "--override-ini", "addopts=-ra --strict-markers --strict-config -p no:benchmark",
         "--hypothesis-profile", "default",
         *UNIT_TESTS],
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
