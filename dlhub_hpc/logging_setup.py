"""Log output for the hub, workers and the gateway: plain text, or one JSON object a line.

In text, a record's message has its control characters escaped (``\\n``, ``\\x1b``) and
a traceback's lines are indented: names and inputs in messages are callers', and none may
start a line that reads as a record of its own.

``setup_logging(level, "json")`` makes every record a JSON object with ``time``, ``level``,
``logger`` and ``message`` (and ``request_id`` where there is one, ``exc`` for a
traceback), so that a request can be followed from the gateway through the hub to the
worker that ran it by its id. The id comes from the record (``extra={"request_id": ...}``)
or from ``request_context``, which code around one request's work enters.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import IO, Any, Literal

logger = logging.getLogger(__name__)

LogFormat = Literal["text", "json"]
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The request (or, around a whole batch, the requests) the current code works for.
request_id_var: contextvars.ContextVar[str | Sequence[str] | None] = contextvars.ContextVar(
    "dlhub_request_id", default=None)
_BUILTIN = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def one_line(text: str) -> str:
    """``text`` with every control character (newlines, escapes) written as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class TextFormatter(logging.Formatter):
    """A record a line: only a record starts a line at its first column."""

    def format(self, record: logging.LogRecord) -> str:
        # logging caches a record's traceback text for every handler; another formatter's
        # (not indented) must not be reused here, nor ours elsewhere
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = one_line(message)
        try:
            return super().formatMessage(record)
        finally:  # other handlers may format the same record
            record.message = message

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + one_line(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, request_id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if isinstance(rid, str):
            entry["request_id"] = rid
        elif rid:
            entry["request_ids"] = list(rid)
        for key, value in vars(record).items():  # what a caller passed in extra=
            if key not in _BUILTIN and key not in entry and key != "request_id":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: int | str = logging.INFO, fmt: str = "text",
                  stream: IO[str] | None = None, text_format: str = TEXT_FORMAT) -> None:
    """Replace the root logger's handlers with one to ``stream`` (stderr) in ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def default_logging(level: int) -> None:
    """What ``logging.basicConfig`` does, in ``TextFormatter``: a stderr handler at
    ``level`` where the root logger has none yet (a test's capture is left as it is)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


@contextlib.contextmanager
def request_context(request_id: str | Sequence[str] | None) -> Iterator[None]:
    """Records logged inside carry ``request_id`` (a list of them: ``request_ids``)."""
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


def log_items(log: logging.Logger, request_ids: Sequence[str] | None, results: Sequence[Any],
              what: str) -> None:
    """One DEBUG record per item of a batch (an error item: INFO), each with its request id."""
    if not request_ids or not log.isEnabledFor(logging.INFO):
        return
    for rid, result in zip(request_ids, results, strict=False):
        ok = isinstance(result, list) and bool(result) and result[0] is True
        if ok:
            log.debug("%s: item done", what, extra={"request_id": rid})
        else:
            error = result[1] if isinstance(result, list) and len(result) > 1 else result
            kind = error.get("type") if isinstance(error, dict) else type(error).__name__
            log.info("%s: item failed with %s", what, kind, extra={"request_id": rid})


def current_format() -> LogFormat:
    """The format this process logs in (what ``setup_logging`` set; text by default)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return "json"
    return "text"


def worker_log_flags() -> list[str]:
    """Flags that make a worker log as this process does: JSON if it does, DEBUG if it does."""
    flags = ["--log-format", "json"] if current_format() == "json" else []
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        flags += ["--log-level", "DEBUG"]
    return flags
