"""YAML documents: envelopes, and errors that name file, line and field."""

from __future__ import annotations

import pytest

from extauthz.documents import load_documents
from extauthz.errors import DocumentError

GOOD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: a
  namespace: acme
spec:
  rules:
  - to:
    - operation:
        paths: ["/x"]
---
---
apiVersion: extauthz.io/v1
kind: Tenant
metadata: {name: acme}
"""


def test_multi_document_file_with_lines() -> None:
    """Every document is read (empty ones skipped) and fields know their line."""
    docs = load_documents(GOOD, "p.yaml")
    assert [(d.kind, d.name) for d in docs] == [("AuthorizationPolicy", "a"), ("Tenant", "acme")]
    assert docs[0].location(("spec", "rules", 0, "to", 0, "operation", "paths")).line == 10
    err = docs[0].error("bad", ("spec", "rules", 0, "to"))
    assert str(err) == "p.yaml:8: spec.rules[0].to: bad"


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("a: [1,\nb: 2\n", r"p.yaml:3: invalid YAML"),
        ("kind: Nope\n", r"p.yaml:1: kind: unknown kind 'Nope'"),
        (
            "apiVersion: v1\nkind: Tenant\nmetadata: {name: a}\n",
            r"p.yaml:1: apiVersion: apiVersion 'v1'",
        ),
        ("apiVersion: extauthz.io/v1\nkind: Tenant\nmetadata: {}\n", r"metadata.name"),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
            r"metadata.namespace: an AuthorizationPolicy needs",
        ),
        (
            "apiVersion: extauthz.io/v1\nkind: Tenant\nmetadata: {name: a}\nspec: {x: 1, x: 2}\n",
            r"p.yaml:4: spec.x: duplicate key",
        ),
        ("- 1\n- 2\n", "a document must be a mapping"),
        ("a: &a [1]\nb: {<<: *a}\n", "merge keys|mapping"),
    ],
)
def test_errors_name_file_line_and_field(text: str, expect: str) -> None:
    """Broken YAML and broken envelopes are DocumentErrors pointing at the spot."""
    with pytest.raises(DocumentError, match=expect):
        load_documents(text, "p.yaml")


def test_alias_bomb_is_bounded() -> None:
    """A billion-laughs document is refused instead of expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(DocumentError, match="YAML nodes"):
        load_documents("\n".join(lines), "bomb.yaml")


def test_not_utf8() -> None:
    """Bytes that are not UTF-8 are an error, not a crash."""
    with pytest.raises(DocumentError, match="not UTF-8"):
        load_documents(b"kind: \xff\xfe", "b.yaml")
