"""The ghz kit: the protoset built from the pinned types describes the bytes the load sends.

ghz can't be installed here, so protoc (from grpcio-tools, an implementation independent of
the Python runtime's) reads the benchmark's CheckRequest bytes through the built protoset,
exactly as ghz would resolve the Check method and its messages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import workload  # the benchmark's own request builder


def test_protoset_decodes_the_benchmark_request(tmp_path: Path) -> None:
    """protoc decodes the h2load/ghz request with the built protoset, field by field."""
    protoset = tmp_path / "authorization.protoset"
    build = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "ghz" / "build_protoset.py"),
            "--output",
            str(protoset),
            "--check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    request = workload.check_request()
    decoded = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={protoset}",
            "--decode=envoy.service.auth.v3.CheckRequest",
            "envoy/service/auth/v3/external_auth.proto",
        ],
        input=request.SerializeToString(),
        capture_output=True,
        check=False,
    )
    assert decoded.returncode == 0, decoded.stderr.decode()
    text = decoded.stdout.decode()
    assert f'principal: "{request.attributes.source.principal}"' in text
    assert f'host: "{workload.HOST}"' in text
    assert text.count("key:") >= len(request.attributes.request.http.headers)
