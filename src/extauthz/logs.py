"""Structured logging: JSON lines (or console) through structlog, stdlib records included.

Records are rendered where they are logged and written to stderr by a ``QueueListener``
thread, so the event loop never blocks on a slow or full pipe. ``flush_logging`` (also run at
exit) writes what is still queued.

Decision lines (``log_decision``) are written on every logged deny, so a flood of denies pays
for each on the event loop. They skip structlog's bridge to stdlib logging (a frame lookup and
two ``LogRecord``s per line, four fifths of a line's cost): the same processors render the
line where it is logged, and the text joins the other records in the writer's queue, in order.

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
from collections.abc import Callable, MutableMapping
from typing import Any, Final, TextIO

import structlog

from extauthz.redaction import MASK, is_secret

__all__ = ["configure_logging", "flush_logging", "log_decision", "redact"]

DECISION_LOGGER: Final = "extauthz.decision"  # written whatever --log-level says

Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]
_listener: _Listener | None = None
_decisions: _DecisionLines | None = None


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
    writer = _Writer(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))
    _listener = _Listener(handler.queue, writer)
    _listener.start()
    global _decisions
    _decisions = _DecisionLines([*shared, structlog.processors.format_exc_info, renderer], handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(DECISION_LOGGER).setLevel(logging.INFO)


def flush_logging() -> None:
    """Write every queued record and stop the writer thread (configure_logging restarts it)."""
    global _listener, _decisions
    _decisions = None
    if _listener is not None:
        _listener.stop()
        _listener = None


def log_decision(fields: dict[str, Any]) -> None:
    """Write the decision line of ``fields`` (an ``info`` record named "decision" of the
    decision logger; ``fields`` becomes the event). Before ``configure_logging``, through
    structlog as configured."""
    lines = _decisions
    if lines is None:
        structlog.get_logger(DECISION_LOGGER).info("decision", **fields)
    else:
        lines(fields)


class _DecisionLines:
    """Decision lines rendered by ``chain`` (the processors a structlog record of the
    decision logger goes through) and queued as text for the writer."""

    __slots__ = ("_chain", "_logger", "_queue")

    def __init__(self, chain: list[Processor], handler: logging.handlers.QueueHandler) -> None:
        self._chain = chain
        self._logger = logging.getLogger(DECISION_LOGGER)  # add_logger_name reads its name
        self._queue = handler.queue

    def __call__(self, fields: dict[str, Any]) -> None:
        fields["event"] = "decision"  # last, as structlog places it
        event: Any = fields
        for processor in self._chain:
            event = processor(self._logger, "info", event)
        self._queue.put_nowait(event)


class _Listener(logging.handlers.QueueListener):
    """The writer thread: records, and decision lines already rendered (text)."""

    def handle(self, record: logging.LogRecord | str) -> None:
        if isinstance(record, str):
            for handler in self.handlers:
                if isinstance(handler, _Writer):
                    handler.write_line(record)
        else:
            super().handle(record)


class _Writer(logging.StreamHandler[TextIO]):
    def write_line(self, line: str) -> None:
        try:
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(line + self.terminator)
                self.flush()
        except Exception:  # stderr closed: reported as emit reports it, the thread goes on
            self.handleError(logging.makeLogRecord({"msg": "a decision line"}))


atexit.register(flush_logging)
