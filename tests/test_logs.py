"""Structured logs: JSON lines on stderr, secrets masked by one list of names."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from extauthz.decisionlog import mask_headers
from extauthz.logs import DECISION_LOGGER, configure_logging, flush_logging, log_decision, redact
from extauthz.redaction import MASK, is_secret


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    flush_logging()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.parametrize(
    "name",
    ["token", "id_token", "authorization", "cookie", "password", "client_secret", "jwt",
     "api_key", "x-api-key", "apikey", "private_key", "session", "x-session-id"],
)  # fmt: skip
def test_secret_names_are_masked(name: str) -> None:
    """A log key or header name that names a secret has its value masked."""
    assert is_secret(name)
    assert redact(None, "info", {"event": "e", name: "s3cr3t"})[name] == MASK


@pytest.mark.parametrize("name", ["keys", "keeping_last_good", "jwks_uri", "tenant", "monkey"])
def test_harmless_names_are_kept(name: str) -> None:
    """Names that merely contain ``key`` as part of a word (the JWKS ``keys`` count) stay."""
    assert not is_secret(name)
    assert redact(None, "info", {"event": "e", name: 3})[name] == 3


def test_the_event_itself_is_never_masked() -> None:
    """The event text stays, even when it mentions a token."""
    assert redact(None, "info", {"event": "token refreshed"})["event"] == "token refreshed"


def test_decision_log_headers_use_the_same_list() -> None:
    """The decision log masks the headers the log processor would mask, and only those."""
    headers = {"x-api-key": "k", "cookie": "c", "x-keys-count": "2", "accept": "json"}
    masked = mask_headers(headers, is_secret)
    assert masked == {"x-api-key": MASK, "cookie": MASK, "x-keys-count": "2", "accept": "json"}


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_on_stderr_with_secrets_masked(capfd: pytest.CaptureFixture[str]) -> None:
    """configure_logging writes one JSON object per record, stdlib records included, masked."""
    configure_logging("info", "json")
    try:
        structlog.get_logger("extauthz.test").info("jwks fetched", keys=2, api_key="k-123")
        logging.getLogger("extauthz.stdlib").warning("plain", extra={"password": "hunter2"})
        logging.getLogger("extauthz.stdlib").debug("below the level")
    finally:
        flush_logging()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    assert [line["event"] for line in lines] == ["jwks fetched", "plain"]
    assert lines[0]["keys"] == 2
    assert lines[0]["api_key"] == MASK
    assert lines[0]["level"] == "info"
    assert lines[1]["password"] == MASK
    assert "hunter2" not in json.dumps(lines)


def _decision_fields() -> dict[str, object]:
    return {
        "decision_id": "id-7",
        "decision": "deny",
        "headers": {"accept": "json", "x-n": "2"},
        "latency_ms": 0.25,
        "session_key": "s-31337",  # a secret-named key: masked on either path
    }


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_decision_line_is_the_line_structlog_writes(
    capfd: pytest.CaptureFixture[str], fmt: str
) -> None:
    """log_decision renders outside structlog's stdlib bridge, and writes the same line as
    a structlog record of the decision logger would (all but the time), in the order logged,
    with what the context binds (a worker's number) and secret-named values masked."""
    configure_logging("error", fmt)  # decision lines are written whatever the level says
    try:
        structlog.contextvars.bind_contextvars(worker=3)
        structlog.get_logger(DECISION_LOGGER).info("decision", **_decision_fields())
        logging.getLogger("extauthz.stdlib").error("between")
        log_decision(_decision_fields())
    finally:
        structlog.contextvars.clear_contextvars()
        flush_logging()
    lines = [line for line in capfd.readouterr().err.splitlines() if line]
    assert len(lines) == 3, lines
    assert "between" in lines[1]
    assert "s-31337" not in "".join(lines)
    if fmt == "json":
        bridged, direct = json.loads(lines[0]), json.loads(lines[2])
        assert direct["worker"] == 3
        assert direct["session_key"] == MASK
        assert direct["logger"] == DECISION_LOGGER
        assert direct["level"] == "info"
        del bridged["timestamp"], direct["timestamp"]
        assert list(direct.items()) == list(bridged.items())  # keys in the same order
    else:
        # console: "<time> [info     ] decision  ...": the same after the time
        assert lines[2].split(" ", 1)[1] == lines[0].split(" ", 1)[1]
        assert "worker=3" in lines[2]


def test_a_decision_line_before_logging_is_configured_goes_through_structlog(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without configure_logging (a library user, a test), the line is structlog's own."""
    flush_logging()
    structlog.reset_defaults()
    log_decision(_decision_fields())
    out = capsys.readouterr().out
    assert "decision" in out
    assert "id-7" in out
