"""One DEBUG record per request as it enters the hub, goes to a worker and is answered.

Each carries the request id (``request_id``, or ``request_ids`` for a batch), so that with
``--log-format json`` a request is followed through the hub's log and then the worker's.
The loop calls these only when ``logger`` is enabled for DEBUG (``tracing()``): a hub
logging at INFO pays one cached level check per message.
"""

from __future__ import annotations

import logging

from dlhub_hpc.protocol import Batch, Message, Reply, Request

logger = logging.getLogger(__name__)


def tracing() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


def request_in(msg: Request, user: str) -> None:
    logger.debug("request for %s@%s.%s from %r", msg.servable, msg.version or "latest",
                 msg.method or "(default)", user, extra={"request_id": msg.request_id})


def to_worker(worker: bytes, msg: Message) -> None:
    if not isinstance(msg, Batch):
        return
    logger.debug("batch %d (%s, %d items) to worker %s", msg.batch_id, msg.method,
                 len(msg.payloads), worker.decode(errors="replace"),
                 extra={"request_ids": msg.request_ids or []})


def to_client(msg: Message) -> None:
    if not isinstance(msg, Reply):
        return
    outcome = "ok" if msg.ok else (msg.error or {}).get("type", "error")
    logger.debug("reply %s", outcome, extra={"request_id": msg.request_id})
