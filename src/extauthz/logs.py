"""Structured logging: JSON lines (or console) through structlog, stdlib records included.

Records are rendered where they are logged and written to stderr by a ``QueueListener``
thread, so the event loop never blocks on a slow or full pipe. ``flush_logging`` (also run at
exit) writes what is still queued.

Secrets never reach a log line: values under keys that ``redaction.is_secret`` names
(tokens, keys, passwords, sessions, cookies, authorization) are masked by ``redact`` before
rendering, whichever logger the record came from.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

from extauthz.redaction import MASK, is_secret

__all__ = ["configure_logging", "flush_logging", "redact"]

DECISION_LOGGER: Final = "extauthz.decision"  # written whatever --log-level says

_listener: logging.handlers.QueueListener | None = None


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values whose key names a secret (structlog processor)."""
    for key in list(event):
        if key != "event" and is_secret(key):
            event[key] = MASK
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    global _listener
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    flush_logging()
    handler = logging.handlers.QueueHandler(queue.SimpleQueue())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))
    _listener = logging.handlers.QueueListener(handler.queue, writer)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(DECISION_LOGGER).setLevel(logging.INFO)


def flush_logging() -> None:
    """Write every queued record and stop the writer thread (configure_logging restarts it)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(flush_logging)
