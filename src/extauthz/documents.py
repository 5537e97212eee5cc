"""YAML documents with the line of every field, so errors can name file, line and field.

Files and Redis hold the same shape: multi-document YAML, each document a ``Tenant`` or an
Istio ``AuthorizationPolicy``. This module only parses and checks the envelope (apiVersion,
kind, metadata); the spec of each kind is checked by the module that compiles it
(``tenancy`` for Tenant, ``policy.schema`` for AuthorizationPolicy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from extauthz.errors import DocumentError, Location

__all__ = [
    "KIND_DATASET",
    "KIND_POLICY",
    "KIND_RATELIMIT",
    "KIND_TENANT",
    "Document",
    "Path",
    "document_from_data",
    "dump_documents",
    "field_name",
    "load_documents",
]

KIND_TENANT: Final = "Tenant"
KIND_POLICY: Final = "AuthorizationPolicy"
KIND_DATASET: Final = "DataSet"  # a named set of strings, for CEL conditions (datasets.py)
KIND_RATELIMIT: Final = "RateLimit"  # request quotas (ratelimit/schema.py)
API_VERSIONS: Final[Mapping[str, frozenset[str]]] = {
    KIND_TENANT: frozenset({"extauthz.io/v1"}),
    KIND_DATASET: frozenset({"extauthz.io/v1"}),
    KIND_RATELIMIT: frozenset({"extauthz.io/v1"}),
    KIND_POLICY: frozenset({"security.istio.io/v1", "security.istio.io/v1beta1"}),
}
MAX_TEXT_BYTES: Final = 4 * 1024 * 1024
MAX_NODES: Final = 200_000  # bounds alias expansion ("billion laughs") and huge documents
MAX_DEPTH: Final = 64  # nesting of mappings and lists: policies need about ten

Path = tuple[str | int, ...]

# The C loader is much faster on large sets; both keep marks.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def field_name(path: Path) -> str:
    """``("spec", "rules", 0, "from")`` -> ``spec.rules[0].from``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document: its envelope, its plain data and the line of each field."""

    api_version: str
    kind: str
    name: str
    namespace: str
    body: Mapping[str, Any]
    source: str
    lines: Mapping[Path, int] = field(repr=False, compare=False, default_factory=dict)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def annotations(self) -> Mapping[str, str]:
        meta = self.body.get("metadata")
        ann = meta.get("annotations") if isinstance(meta, Mapping) else None
        return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, Mapping) else {}

    @property
    def ref(self) -> str:
        """``Kind namespace/name``, for logs."""
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"

    def location(self, path: Path = ()) -> Location:
        """The line of ``path``, or of its nearest parent that has one."""
        while True:
            line = self.lines.get(path)
            if line is not None or not path:
                return Location(self.source, line or 0)
            path = path[:-1]

    def error(self, message: str, path: Path = ()) -> DocumentError:
        return DocumentError(message, location=self.location(path), field=field_name(path))


def load_documents(text: str | bytes, source: str) -> list[Document]:
    """Parse a multi-document YAML text. Empty documents are skipped.

    Raises DocumentError naming ``source``, the line and the field for anything malformed.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_TEXT_BYTES:
            raise DocumentError(f"larger than {MAX_TEXT_BYTES} bytes", location=Location(source))
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"not UTF-8: {exc}", location=Location(source)) from None
    elif len(text) > MAX_TEXT_BYTES:
        raise DocumentError(f"larger than {MAX_TEXT_BYTES} bytes", location=Location(source))
    docs: list[Document] = []
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is None:
                continue
            lines: dict[Path, int] = {}
            body = _Converter(source, lines).convert(node, ())
            if body is None:
                continue
            docs.append(_envelope(body, source, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or exc.context or "invalid YAML"
        raise DocumentError(f"invalid YAML: {problem}", location=Location(source, line)) from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"invalid YAML: {exc}", location=Location(source)) from None
    return docs


def document_from_data(body: Any, source: str) -> Document:
    """A document from plain data (stored JSON): the envelope checks of ``load_documents``."""
    return _envelope(body, source, {})


def dump_documents(docs: Sequence[Document]) -> str:
    """The documents back as one multi-document YAML text (stable key order)."""
    return yaml.safe_dump_all([_plain(d.body) for d in docs], sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Converter:
    """Turns a composed YAML node tree into plain data, recording each path's line."""

    def __init__(self, source: str, lines: dict[Path, int]) -> None:
        self._source = source
        self._lines = lines
        self._count = 0
        self._constructor = yaml.SafeLoader("")  # resolves scalars exactly like safe_load

    def convert(self, node: yaml.Node, path: Path) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise DocumentError(
                f"more than {MAX_NODES} YAML nodes (aliases expanding too far?)",
                location=Location(self._source, node.start_mark.line + 1),
                field=field_name(path),
            )
        if len(path) > MAX_DEPTH:
            raise self._error(
                f"nested deeper than {MAX_DEPTH} levels (an alias inside its own anchor?)",
                node,
                path[:8],
            )
        self._lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self._error("YAML merge keys are not supported", key_node, path)
                key = self._constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise self._error(f"key {key!r} is not a string", key_node, path)
                if key in out:
                    raise self._error(f"duplicate key {key!r}", key_node, (*path, key))
                self._lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.convert(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._constructor.construct_object(node, deep=True)

    def _error(self, message: str, node: yaml.Node, path: Path) -> DocumentError:
        return DocumentError(
            message,
            location=Location(self._source, node.start_mark.line + 1),
            field=field_name(path),
        )


def _envelope(body: Any, source: str, lines: Mapping[Path, int]) -> Document:
    def fail(message: str, path: Path = ()) -> DocumentError:
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        return DocumentError(
            message, location=Location(source, lines.get(probe, 0)), field=field_name(path)
        )

    if not isinstance(body, dict):
        raise fail("a document must be a mapping")
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in API_VERSIONS:
        raise fail(f"unknown kind {kind!r}; expected one of {sorted(API_VERSIONS)}", ("kind",))
    api_version = body.get("apiVersion")
    if not isinstance(api_version, str) or api_version not in API_VERSIONS[kind]:
        raise fail(
            f"apiVersion {api_version!r} is not valid for {kind}; "
            f"expected one of {sorted(API_VERSIONS[kind])}",
            ("apiVersion",),
        )
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        raise fail("metadata must be a mapping with a name", ("metadata",))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise fail("metadata.name must be a non-empty string", ("metadata", "name"))
    namespace = meta.get("namespace", "")
    if not isinstance(namespace, str):
        raise fail("metadata.namespace must be a string", ("metadata", "namespace"))
    if kind in (KIND_POLICY, KIND_DATASET, KIND_RATELIMIT) and not namespace:
        raise fail(
            f"{'an' if kind == KIND_POLICY else 'a'} {kind} needs metadata.namespace: "
            "it names the tenant",
            ("metadata", "namespace"),
        )
    ann = meta.get("annotations", {})
    if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
        raise fail("metadata.annotations must map strings to strings", ("metadata", "annotations"))
    spec = body.get("spec", {})
    if spec is None:
        body["spec"] = spec = {}
    if not isinstance(spec, dict):
        raise fail("spec must be a mapping", ("spec",))
    return Document(
        api_version=api_version,
        kind=kind,
        name=name,
        namespace=namespace,
        body=body,
        source=source,
        lines=lines,
    )
