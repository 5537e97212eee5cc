"""Structured logging: JSON lines (or console) through structlog, stdlib records included.

Records are rendered where they are logged and written to stderr by a ``QueueListener``
thread, so the event loop never blocks on a slow or full pipe. ``flush_logging`` (also run at
exit) writes what is still queued.

The queue is bounded (``buffer`` records): when stderr is slower than the server (a stalled
log collector, a full pipe), records beyond it are dropped and counted (``dropped_records``,
the ``extauthz_log_records_dropped_total`` metric, and a warning once the writer moves
again), never held without limit and never waited for: logging cannot block a Check or grow
the process until it is killed. Nor keep it from exiting: the writer writes to stderr's file
descriptor holding no lock another thread needs, and a stop waits at most 5 s for it.

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
import os
import queue
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, Final, TextIO

import structlog

from extauthz.redaction import MASK, is_secret

__all__ = [
    "DEFAULT_BUFFER",
    "configure_logging",
    "dropped_records",
    "flush_logging",
    "log_decision",
    "redact",
]

DECISION_LOGGER: Final = "extauthz.decision"  # written whatever --log-level says
DEFAULT_BUFFER: Final = 10_000  # records queued for the writer (decision lines: ~1 KiB each)
_STOP_SECONDS: Final = 5.0  # how long a stop waits for a writer stuck on a stalled stderr

Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]
_listener: _Listener | None = None
_decisions: _DecisionLines | None = None


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask values whose key names a secret (structlog processor)."""
    for key in list(event):
        if key != "event" and is_secret(key):
            event[key] = MASK
    return event


class _Drops:
    """Records dropped because the queue was full (counted where they were logged)."""

    count = 0


def dropped_records() -> int:
    """Log records dropped so far because the writer's queue was full."""
    return _Drops.count


def configure_logging(level: str = "info", fmt: str = "json", buffer: int = DEFAULT_BUFFER) -> None:
    global _listener, _decisions
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
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler = _Handler(records, buffer)
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
    _listener = _Listener(records, writer, buffer)
    _listener.start()
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

    __slots__ = ("_chain", "_logger", "_put")

    def __init__(self, chain: list[Processor], handler: _Handler) -> None:
        self._chain = chain
        self._logger = logging.getLogger(DECISION_LOGGER)  # add_logger_name reads its name
        self._put = handler.put

    def __call__(self, fields: dict[str, Any]) -> None:
        fields["event"] = "decision"  # last, as structlog places it
        event: Any = fields
        for processor in self._chain:
            event = processor(self._logger, "info", event)
        self._put(event)


class _Handler(logging.handlers.QueueHandler):
    """Records rendered here and queued for the writer; dropped and counted while the queue
    holds ``buffer`` of them (a bound kept to within the few records that threads logging
    at the same instant can add together; SimpleQueue's put is many times cheaper than a
    bounded Queue's)."""

    def __init__(self, records: queue.SimpleQueue[Any], buffer: int) -> None:
        super().__init__(records)
        self._records = records
        self._buffer = buffer

    def enqueue(self, record: logging.LogRecord) -> None:
        self.put(record)

    def put(self, item: logging.LogRecord | str) -> None:
        if self._records.qsize() < self._buffer:
            self._records.put_nowait(item)
        else:
            _Drops.count += 1


class _Listener(logging.handlers.QueueListener):
    """The writer thread: records, and decision lines already rendered (text). Once it has
    written after records were dropped, it logs how many (with room in the queue for it)."""

    def __init__(self, records: queue.SimpleQueue[Any], writer: _Writer, buffer: int) -> None:
        super().__init__(records, writer)
        self._records = records
        self._writer = writer
        self._buffer = buffer
        self._reported = _Drops.count

    def handle(self, record: logging.LogRecord | str) -> None:
        if isinstance(record, str):
            self._writer.write_line(record)
        else:
            super().handle(record)
        dropped = _Drops.count
        if dropped != self._reported and self._records.qsize() * 2 <= self._buffer:
            logging.getLogger("extauthz.logs").warning(
                "log records dropped: stderr was slower than the server",
                extra={"dropped": dropped - self._reported, "buffer": self._buffer},
            )
            self._reported = dropped

    def stop(self) -> None:
        """Write what is queued and end the thread, waiting at most ``_STOP_SECONDS`` for a
        writer stuck on a stalled stderr (it is a daemon thread: the process can still exit)."""
        thread = self._thread
        if thread is None:
            return
        self._records.put_nowait(self._sentinel)  # type: ignore[attr-defined]
        thread.join(_STOP_SECONDS)
        self._thread = None


class _Writer(logging.Handler):
    """Writes each line to the file descriptor of stderr itself, only ever from the writer
    thread, so it holds no lock while it writes: a write blocked on a stalled stderr holds
    nothing another thread waits for, and the process can still exit (``logging.shutdown``
    takes every handler's lock; Python's own stderr object holds one while it writes)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream in memory (a test's capture)
            self._fd = None

    def handle(self, record: logging.LogRecord) -> bool:
        """``Handler.handle`` without its lock (one thread calls it)."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        try:
            if self._fd is None:
                self._stream.write(line + "\n")
                self._stream.flush()
                return
            data = (line + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self._fd, data) :]
        except (OSError, ValueError):  # stderr closed: the line is lost, the thread goes on
            pass


atexit.register(flush_logging)
