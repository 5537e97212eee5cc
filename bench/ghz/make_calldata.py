"""Write the ghz call data: the benchmark CheckRequest as proto3 JSON.

    python bench/ghz/make_calldata.py [--output bench/ghz/check_request.json]

The request comes from bench/workload.py, the builder the h2load data file of
bench/grpc_load.py comes from, so ghz and h2load send the same Check (SPIFFE principal,
x-forwarded-client-cert, a JWT of the bench issuer, 14 headers) to the bench tenant in
bench/policies/. When ``authorization.protoset`` exists (build_protoset.py), the JSON is
also parsed against it, in a descriptor pool of its own, and must serialize to the same
bytes as the builder's message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

HERE: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import workload  # noqa: E402

DEFAULT_OUTPUT: Final = HERE / "check_request.json"
PROTOSET: Final = HERE / "authorization.protoset"


def same_as_protoset(text: str, expected: bytes, protoset: Path) -> bool:
    fds = descriptor_pb2.FileDescriptorSet.FromString(protoset.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in fds.file:
        pool.Add(proto)
    cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("envoy.service.auth.v3.CheckRequest")
    )
    message = json_format.Parse(text, cls())
    return bool(message.SerializeToString(deterministic=True) == expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    request = workload.check_request()
    text = workload.request_json(request) + "\n"
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(text)} bytes)")
    if PROTOSET.exists():
        expected = request.SerializeToString(deterministic=True)
        if not same_as_protoset(text, expected, PROTOSET):
            print(f"{args.output} does not match the builder's request under {PROTOSET}")
            return 1
        print(f"checked against {PROTOSET.name}: same bytes as the h2load request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
