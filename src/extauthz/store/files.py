"""The file store: a directory of multi-document YAML files, reloaded when they change.

The directory is polled (mtime and size of every ``*.yaml``/``*.yml`` below it), which needs
no extra dependency and works the same on a ConfigMap volume, where files change by a
symlink swap that inotify watchers often miss. A file that fails to parse keeps its last
good documents; the error is logged with file, line and field.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import structlog

from extauthz.documents import Document, load_documents
from extauthz.errors import DocumentError
from extauthz.sources import TenantSource
from extauthz.store.base import Sink, Store
from extauthz.tenancy import group_by_tenant

__all__ = ["FileStore", "read_directory", "sources_of"]

log = structlog.get_logger("extauthz.store.files")
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class _Parsed:
    stamp: tuple[int, int]  # (mtime_ns, size)
    documents: tuple[Document, ...]


def policy_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())


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
        self._sources: dict[str, TenantSource] = {}
        self._wake: asyncio.Event | None = None

    def reload(self) -> None:
        """Re-read every file now, changed or not (SIGHUP). Call on the store's loop."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, sink: Sink) -> None:
        self._wake = asyncio.Event()
        self._scan(sink)
        sink.replace_all(self._sources)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            else:
                self._wake.clear()
                # Forget the stamps, keep the documents: a file that now fails keeps them.
                self._files = {p: _Parsed((-1, -1), f.documents) for p, f in self._files.items()}
                log.info("reloading policy files", path=str(self.root))
            previous = self._sources
            if not self._scan(sink):
                continue
            for tenant in previous.keys() - self._sources.keys():
                sink.update(tenant, None)
            for tenant, source in self._sources.items():
                old = previous.get(tenant)
                if old is None or old.version != source.version:
                    sink.update(tenant, source)

    def _scan(self, sink: Sink) -> bool:
        """Re-read changed files. True when any file was added, changed or removed."""
        try:
            paths = policy_files(self.root)
        except OSError as exc:
            log.error("cannot list policy directory", path=str(self.root), error=str(exc))
            return False
        changed = False
        seen: set[Path] = set()
        for path in paths:
            seen.add(path)
            stamp = (0, 0)
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                cached = self._files.get(path)
                if cached is not None and cached.stamp == stamp:
                    continue
                documents = tuple(load_documents(path.read_bytes(), str(path)))
            except (DocumentError, OSError) as exc:
                # Keep the last good documents of this file; remember the stamp so the
                # error is reported once per change, not once per poll.
                kept = self._files.get(path)
                if kept is None or kept.stamp != stamp:
                    log.error(
                        "policy file rejected; keeping its last good version",
                        file=str(path),
                        error=str(exc),
                        kept=kept is not None,
                    )
                    sink.reject("*", str(path), exc)
                    self._files[path] = _Parsed(stamp, kept.documents if kept else ())
                continue
            self._files[path] = _Parsed(stamp, documents)
            changed = True
        for gone in self._files.keys() - seen:
            del self._files[gone]
            changed = True
        if changed or not self._sources:
            self._sources = sources_of(
                [d for p in sorted(self._files) for d in self._files[p].documents]
            )
        return changed
