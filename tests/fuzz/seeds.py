"""Write the seed corpora into tests/fuzz/corpus/<harness>/.

``python -m tests.fuzz.seeds [HARNESS ...]`` (all harnesses without a name). The seeds are
committed; run it again for ``check`` after changing the example requests, for
``documents`` after changing the policies. A harness's ``seed-*`` files are replaced by the
ones made now. Every harness's seeds are the same bytes from run to run except ``jwt``'s
(an ES256 signature is randomized): regenerate those only when their claims change.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format

from tests.fuzz.common import CORPUS, REPO
from tests.helpers import envoy_request

GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/gateway"


def check_seeds() -> list[bytes]:
    out = []
    for path in sorted((REPO / "examples" / "requests").glob("*.json")):
        req = json_format.Parse(path.read_text(), external_auth_pb2.CheckRequest())
        out.append(b"\x00" + req.SerializeToString(deterministic=True))
    # a request as Envoy sends it (time, scheme, protocol, size, a body): read from its bytes
    envoy = envoy_request(
        host="orders.acme.example.com",
        path="/api/orders?x=1",
        principal=GATEWAY,
        headers={"authorization": "Bearer t", "x-forwarded-for": "10.0.0.9"},
        body="{}",
        context_extensions={"route": "r1"},
    )
    out.append(b"\x00" + envoy.SerializeToString(deterministic=True))
    out += [b"\x01" + bytes(range(64)), b"\x03" + b"\xff" * 64]
    return out


def identity_seeds() -> list[bytes]:
    spiffe = [
        "spiffe://cluster.local/ns/default/sa/web",
        "spiffe://td",
        "spiffe://TD/x",
        "spiffe://td/a//b",
        "spiffe://td/./a",
        "spiffe://td/a%2fb",
    ]
    xfcc = [
        f'By={GATEWAY};Hash=abc;Subject="CN=x,O=y";URI=spiffe://td/ns/a/sa/b',
        f"By={GATEWAY};URI=spiffe://td/ns/a/sa/b,By={GATEWAY};URI=spiffe://td/ns/c/sa/d",
        'URI="spiffe://td/ns/a/sa/b,By=x;URI=spiffe://td/ns/admin/sa/root"',
        'Subject="CN=a\\"b";URI=spiffe://td/ns/a/sa/b',
        "URI=spiffe://td/ns/a/sa/b;URI=spiffe://td/ns/admin/sa/root",
        "By=x;Hash=;URI=",
        'URI="unterminated',
    ]
    return [b"\x00" + s.encode() for s in spiffe] + [b"\x01" + s.encode() for s in xfcc]


def pathnorm_seeds() -> list[bytes]:
    paths = [
        "/api/orders/42?x=1#f",
        "/a/./b/../c",
        "/a/%2e%2E/b",
        "//a///b",
        "/a%2fb%5Cc",
        "/..",
        "a/../../b",
        "/%2e%2e%2f..%2fetc",
    ]
    return [p.encode() for p in paths]


def documents_seeds() -> list[bytes]:
    out = []
    for path in sorted((REPO / "policies").glob("*.yaml")):
        text = path.read_bytes()
        out.append(text)
        out += [part.strip() + b"\n" for part in text.split(b"\n---\n") if part.strip()]
    out.append(b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    return out


def jwt_seeds() -> list[bytes]:
    from tests.fuzz.fuzz_jwt import AUDIENCE, ISSUER, NOW, sign

    good = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(NOW) + 600}
    tokens = [
        sign(good),
        sign({**good, "exp": int(NOW) - 600}),
        sign({**good, "aud": "other"}),
        sign({**good, "iss": "https://evil.test"}),
        sign({**good, "sub": 12}),
        sign(good, kid="unknown"),
        "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5mdXp6LnRlc3QifQ.",
        "a.b.c",
    ]
    return [prefix + t.encode() for t in tokens for prefix in (b"\x00", b"\x01")]


SEEDS = {
    "check": check_seeds,
    "identity": identity_seeds,
    "pathnorm": pathnorm_seeds,
    "documents": documents_seeds,
    "jwt": jwt_seeds,
}


def write(folder: Path, seeds: list[bytes]) -> None:
    """``seeds`` as ``seed-<sha1>`` files in ``folder``, in place of its earlier ``seed-*``
    files (other files, a finding kept by hand, stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"seed-{hashlib.sha1(seed).hexdigest()[:16]}": seed for seed in seeds}
    for stale in folder.glob("seed-*"):
        if stale.name not in names:
            stale.unlink()
    for name, seed in names.items():
        (folder / name).write_bytes(seed)


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(SEEDS)
    unknown = [name for name in chosen if name not in SEEDS]
    if unknown:
        raise SystemExit(f"no harness {unknown[0]!r}; harnesses: {', '.join(SEEDS)}")
    for name in chosen:
        write(CORPUS / name, SEEDS[name]())
        print(name, len(list((CORPUS / name).iterdir())))
