"""The file store: a directory of multi-document YAML files, reloaded when they change.

The directory is polled (every ``*.yaml``/``*.yml`` below it, stat'ed through symlinks),
which needs no extra dependency and works the same on a ConfigMap volume. The kubelet writes
a ConfigMap as ``..<timestamp>/`` holding the files, a ``..data`` symlink to it, and one
top-level symlink per file (``acme.yaml -> ..data/acme.yaml``); an update writes a new
timestamped directory and swaps ``..data`` in one rename. Names that start with a dot are
skipped, so each file is read once, through its top-level symlink; a file's stamp is the
stat of what the link points to now (device, inode, change time, mtime, size), so the swap is
seen even when the symlink itself never changes.

A policy directory is parsed as one unit, because a file that does not parse cannot say
which tenants it held (a DENY it carried must not silently vanish from its tenant):

- at the first scan, while any file fails to parse, nothing is loaded: the server stays
  not ready (every Check ``not_ready``, health NOT_SERVING) and keeps polling;
- later, while any file fails to parse, no change is applied: every tenant keeps its last
  good version, whole. Errors are logged with file, line and field, once per change.

Compile errors are per tenant and handled by the registry (last good version, or
``tenant_unavailable`` when the tenant has none).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from extauthz.documents import Document, load_documents
from extauthz.errors import DocumentError
from extauthz.sources import TenantSource
from extauthz.store.base import Sink, Store
from extauthz.tenancy import group_by_tenant

__all__ = ["FileStore", "policy_files", "read_directory", "sources_of"]

log = structlog.get_logger("extauthz.store.files")
SUFFIXES = (".yaml", ".yml")
Stamp = tuple[int, ...]  # (st_dev, st_ino, st_ctime_ns, st_mtime_ns, st_size) of the target


@dataclass(frozen=True, slots=True)
class _Parsed:
    stamp: Stamp
    documents: tuple[Document, ...]
    error: DocumentError | None = None


def policy_files(root: Path) -> list[Path]:
    """Every policy file below ``root``, once: dot-named entries (the kubelet's ``..data``
    and ``..<timestamp>`` of a ConfigMap volume, editors' and VCS files) are skipped;
    symlinks are followed, a directory reached twice is read once."""
    if root.is_file():
        return [root]
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        st = directory.stat()
        if (st.st_dev, st.st_ino) in visited:
            continue
        visited.add((st.st_dev, st.st_ino))
        for entry in os.scandir(directory):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir():  # follows symlinks
                pending.append(path)
            elif entry.is_file() and path.suffix in SUFFIXES:
                found.append(path)
    return sorted(found)


def _stamp(path: Path) -> Stamp:
    """What the path points to now: a symlink swap changes the inode even if nothing else."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)


def read_directory(root: Path) -> tuple[list[Document], list[DocumentError]]:
    """Every document below ``root`` (a directory or one file), and every file's error."""
    docs: list[Document] = []
    errors: list[DocumentError] = []
    if not root.exists():
        errors.append(DocumentError(f"{root} does not exist"))
        return docs, errors
    for path in policy_files(root):
        try:
            docs.extend(load_documents(path.read_bytes(), str(path)))
        except DocumentError as exc:
            errors.append(exc)
        except OSError as exc:
            errors.append(DocumentError(f"cannot read {path}: {exc.strerror}"))
    return docs, errors


def sources_of(docs: list[Document]) -> dict[str, TenantSource]:
    """Group documents by tenant; each tenant's version is a hash of its documents."""
    out: dict[str, TenantSource] = {}
    for tenant, group in group_by_tenant(docs).items():
        digest = hashlib.sha256()
        for doc in group:
            digest.update(json.dumps(doc.body, sort_keys=True, default=str).encode())
        out[tenant] = TenantSource(tenant, digest.hexdigest()[:12], tuple(group))
    return out


class FileStore(Store):
    """Tenant documents from ``root``; polls every ``interval`` seconds."""

    name = "files"

    def __init__(self, root: Path, *, interval: float = 1.0) -> None:
        self.root = root
        self.interval = interval
        self._files: dict[Path, _Parsed] = {}
        self._sources: dict[str, TenantSource] = {}  # what the sink was last given
        self._loaded = False
        self._list_error = ""
        self._wake: asyncio.Event | None = None

    def reload(self) -> None:
        """Re-read every file now, changed or not (SIGHUP). Call on the store's loop."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, sink: Sink) -> None:
        self._wake = asyncio.Event()
        self._scan(sink)
        self._apply(sink)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            else:
                self._wake.clear()
                self._files = {p: _Parsed((), f.documents, f.error) for p, f in self._files.items()}
                log.info("reloading policy files", path=str(self.root))
            if self._scan(sink):
                self._apply(sink)

    def _apply(self, sink: Sink) -> None:
        """Give the sink the directory's tenants, unless a file does not parse."""
        broken = sorted(str(p) for p, f in self._files.items() if f.error is not None)
        if broken:
            log.error(
                "a policy file does not parse; no change applied until it does"
                if self._loaded
                else "a policy file does not parse; not ready until it does",
                files=broken,
            )
            return
        sources = sources_of([d for p in sorted(self._files) for d in self._files[p].documents])
        if not self._loaded:
            sink.replace_all(sources)
            self._loaded = True
        else:
            for tenant in self._sources.keys() - sources.keys():
                sink.update(tenant, None)
            for tenant, source in sources.items():
                old = self._sources.get(tenant)
                if old is None or old.version != source.version:
                    sink.update(tenant, source)
        self._sources = sources

    def _scan(self, sink: Sink) -> bool:
        """Re-read changed files. True when any file was added, changed or removed."""
        try:
            paths = policy_files(self.root)
        except OSError as exc:
            if str(exc) != self._list_error:  # once per distinct error, not once per poll
                log.error("cannot list policy directory", path=str(self.root), error=str(exc))
            self._list_error = str(exc)
            return False
        self._list_error = ""
        changed = False
        seen: set[Path] = set()
        for path in paths:
            seen.add(path)
            cached = self._files.get(path)
            try:
                stamp = _stamp(path)
                if cached is not None and cached.stamp == stamp:
                    continue
                documents = tuple(load_documents(path.read_bytes(), str(path)))
            except (DocumentError, OSError) as exc:
                stamp = _stamp_or_none(path)
                if cached is not None and cached.error is not None and cached.stamp == stamp:
                    continue  # reported once per change, not once per poll
                error = exc if isinstance(exc, DocumentError) else _unreadable(path, exc)
                log.error("policy file rejected", file=str(path), error=str(error))
                sink.reject("*", str(path), error)
                self._files[path] = _Parsed(stamp, (), error)
                changed = True
                continue
            self._files[path] = _Parsed(stamp, documents)
            changed = True
        for gone in self._files.keys() - seen:
            del self._files[gone]
            changed = True
        return changed


def _unreadable(path: Path, exc: OSError) -> DocumentError:
    return DocumentError(f"cannot read {path}: {exc.strerror or exc}")


def _stamp_or_none(path: Path) -> Stamp:
    try:
        return _stamp(path)
    except OSError:
        return ()
