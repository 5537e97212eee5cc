"""Build ``authorization.protoset`` for ghz (and grpcurl) from the pinned xds-protos package.

    python bench/ghz/build_protoset.py [--output bench/ghz/authorization.protoset]

The set is the ``FileDescriptorProto`` of ``envoy/service/auth/v3/external_auth.proto`` and
of every file it imports, transitively, dependencies first, taken from the descriptors the
installed ``xds-protos`` registered in the default descriptor pool: the same messages
extauthz serves, with no .proto file copied or edited by hand. The output is deterministic
for one xds-protos version; it is not committed (see bench/README.md) because it is a
derived binary that would go stale on a version bump. ``--check`` loads the written set into
a fresh pool and confirms the Check method and its message types resolve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

HERE: Final = Path(__file__).resolve().parent
DEFAULT_OUTPUT: Final = HERE / "authorization.protoset"
SERVICE: Final = "envoy.service.auth.v3.Authorization"
METHOD: Final = "Check"


def file_set(root: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorSet:
    """``root`` and its transitive imports, each file after the files it imports."""
    ordered: list[descriptor.FileDescriptor] = []
    seen: set[str] = set()

    def visit(fd: descriptor.FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            visit(dep)
        ordered.append(fd)

    visit(root)
    out = descriptor_pb2.FileDescriptorSet()
    for fd in ordered:
        fd.CopyToProto(out.file.add())
    return out


def check(path: Path) -> str:
    """Load the set into an empty pool; resolve the service, method and message types."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in fds.file:
        pool.Add(proto)
    method = pool.FindServiceByName(SERVICE).FindMethodByName(METHOD)
    return (
        f"{len(fds.file)} files; {SERVICE}.{METHOD}: "
        f"{method.input_type.full_name} -> {method.output_type.full_name}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="verify the written set")
    args = parser.parse_args(argv)
    data = file_set(external_auth_pb2.DESCRIPTOR).SerializeToString(deterministic=True)
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    if args.check:
        print("check:", check(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
