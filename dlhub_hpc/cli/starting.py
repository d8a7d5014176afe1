"""What ``dlhub-hpc run`` shows while a servable starts on demand: a spinner with the stage
(queued at the scheduler, job running, model loading); on a pipe, one line per stage."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from dlhub_hpc.client import Client
from dlhub_hpc.errors import DlhubHpcError

logger = logging.getLogger(__name__)

POLL = 0.25  # seconds between looks at the request's stage


def wait_showing_stage(client: Client, servable: str, future: Future[Any], request_id: str,
                       console: Console) -> Any:
    """``future``'s result; while its servable starts, the stage it reached on ``console``."""
    spinner: Status | None = None
    shown: str | None = None
    try:
        while True:
            try:
                return future.result(timeout=POLL)
            except FutureTimeout:
                pass
            try:
                status = client.request_status(request_id, timeout=4 * POLL)
            except DlhubHpcError:  # an older hub, or a slow one: the answer still comes
                continue
            stage, reason = status.get("stage"), status.get("reason")
            if reason:  # not started at all: say why, which is what the user must change
                stage = f"{stage or 'not started'} ({reason})"
            if not stage or stage == shown:
                continue
            shown = stage
            text = f"{escape(servable)} is starting: {escape(stage)}"
            if not console.is_terminal:
                console.print(text)
            elif spinner is None:
                spinner = console.status(text)
                spinner.start()
            else:
                spinner.update(text)
    finally:
        if spinner is not None:
            spinner.stop()
