"""JSON log records, request ids in them, and workers told to log as the hub does."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from dlhub_hpc.logging_setup import (
    TextFormatter,
    current_format,
    log_items,
    request_context,
    setup_logging,
    worker_log_flags,
)
from dlhub_hpc.pilot.command import worker_command

log = logging.getLogger("dlhub_hpc.test")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    setup_logging(logging.DEBUG, "json", out)
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_the_request_id(stream: io.StringIO) -> None:
    log.info("plain %s", "text")
    with request_context("req-1"):
        log.warning("inside\nacross lines")
    log.info("given", extra={"request_id": "req-2", "servable": "a/b"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    plain, inside, given, failed = lines(stream)
    assert plain["message"] == "plain text" and "request_id" not in plain
    assert (plain["level"], plain["logger"]) == ("INFO", "dlhub_hpc.test")
    assert str(plain["time"]).endswith("+00:00")
    assert (inside["request_id"], inside["message"]) == ("req-1", "inside\nacross lines")
    assert (given["request_id"], given["servable"]) == ("req-2", "a/b")
    assert "ValueError: boom" in str(failed["exc"])


def test_a_batch_logs_each_item_with_its_own_id(stream: io.StringIO) -> None:
    error = {"type": "ExecutionError", "message": "no", "details": {}}
    with request_context(["r1", "r2"]):
        log.info("running")
    log_items(log, ["r1", "r2"], [[True, 1], [False, error]], "batch 3 (run)")
    running, done, failed = lines(stream)
    assert running["request_ids"] == ["r1", "r2"]
    assert (done["request_id"], done["level"]) == ("r1", "DEBUG")
    assert (failed["request_id"], failed["level"]) == ("r2", "INFO")
    assert "ExecutionError" in str(failed["message"])


def test_workers_are_started_logging_as_the_hub_does(stream: io.StringIO) -> None:
    assert current_format() == "json"
    assert worker_log_flags() == ["--log-format", "json", "--log-level", "DEBUG"]
    argv = worker_command("tcp://127.0.0.1:5", "a/b", extra=["--log-level", "INFO"]).argv
    assert argv[-6:] == ["--log-format", "json", "--log-level", "DEBUG", "--log-level", "INFO"]


def test_a_text_hub_adds_no_flags() -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        assert current_format() == "text" and worker_log_flags() == []
    finally:
        root.setLevel(level)


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("INFO", "yaml")


def test_a_callers_newlines_cannot_forge_a_text_record() -> None:
    """Servable names and paths in messages are callers': in text, one record is one line,
    and only a record starts at the first column (a traceback's lines are indented)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    setup_logging(logging.DEBUG, "text", out)
    try:
        log.debug("request for %s", "evil\n2024-01-01 00:00:00,000 ERROR dlhub_hpc fake\x1b[2J")
        try:
            raise ValueError("bad\nFORGED line")
        except ValueError:
            log.exception("failed on %s", "x\r\ny")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    text = out.getvalue()
    starts = [line for line in text.splitlines() if not line.startswith(" ")]
    assert len(starts) == 2, text
    assert starts[0].endswith("request for evil\\n2024-01-01 00:00:00,000 ERROR dlhub_hpc "
                              "fake\\x1b[2J")
    assert starts[1].endswith("failed on x\\r\\ny")
    assert "  FORGED line" in text.splitlines() and "\x1b" not in text


def test_the_cli_logs_text_through_the_same_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlhub_hpc.logging_setup import TextFormatter, default_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    default_logging(logging.INFO)
    [handler] = root.handlers
    assert isinstance(handler.formatter, TextFormatter) and root.level == logging.INFO


def test_a_traceback_another_formatter_cached_is_still_indented() -> None:
    plain, ours = logging.Formatter("%(message)s"), TextFormatter("%(message)s")
    try:
        raise ValueError("bad\nFORGED line")
    except ValueError:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "failed", None,
                                sys.exc_info())
    plain.format(record)  # another handler first: logging caches its traceback text
    lines = ours.format(record).splitlines()
    assert lines[0] == "failed" and all(line.startswith("  ") for line in lines[1:])
    assert "  FORGED line" in lines
