"""Structured logs: JSON lines on stderr, secrets masked by one list of names."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from extauthz.decisionlog import mask_headers
from extauthz.logs import configure_logging, flush_logging, redact
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
