"""The Open Inference Protocol gateway a hub starts beside itself (``HubConfig.gateway``).

It runs as its own process (``dlhub-hpc gateway start``), so that HTTP parsing never holds
the broker loop's GIL and a fault in it cannot stop the hub. It connects as the hub's
user; every model call it forwards carries its caller's bearer token, which the hub checks.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading

from dlhub_hpc.broker.config import GatewaySettings
from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)

_READY_PREFIX = "gateway listening on "


class GatewayProcess:
    """Start with ``start()``; ``url`` once it listens; ``stop()`` ends it."""

    def __init__(self, settings: GatewaySettings, hub_address: str) -> None:
        self.settings = settings
        self.hub_address = hub_address
        self.url = ""
        self.grpc_url = ""  # with settings.grpc_port
        self._proc: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        return f"GatewayProcess({self.settings!r}, hub_address={self.hub_address!r})"

    def command(self) -> list[str]:
        s = self.settings
        cmd = [sys.executable, "-m", "dlhub_hpc.cli", "--hub", self.hub_address, "gateway",
               "start", "--host", s.host, "--port", str(s.port)]
        if s.grpc_port is not None:
            cmd += ["--grpc-port", str(s.grpc_port)]
        if s.tls_cert is not None and s.tls_key is not None:
            cmd += ["--tls-cert", str(s.tls_cert), "--tls-key", str(s.tls_key)]
        return cmd

    def start(self, timeout: float = 60.0) -> str:
        """Start the gateway and return its URL once it listens (``ConfigError`` if not)."""
        self._proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL)
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(lines,), daemon=True,
                         name="hub-gateway-out").start()
        line = _next(lines, timeout)
        if self.settings.grpc_port is not None and line.startswith(_READY_PREFIX):
            grpc = _next(lines, timeout)  # its gRPC endpoint's line comes once both listen
            self.grpc_url = grpc.removeprefix(_READY_PREFIX).strip()
            if not grpc.startswith(_READY_PREFIX):
                line = ""
        if not line.startswith(_READY_PREFIX):
            self.stop()
            raise ConfigError(f"the gateway did not start on {self.settings.host}:"
                              f"{self.settings.port} (is the port taken, or aiohttp not "
                              "installed? pip install 'dlhub-hpc[gateway]'); see its log above")
        self.url = line.removeprefix(_READY_PREFIX).strip()
        logger.info("the Open Inference Protocol gateway listens on %s", self.url)
        return self.url

    def _read(self, lines: queue.SimpleQueue[str]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:  # read to the end, so the gateway never blocks on a pipe
            lines.put(line)
        lines.put("")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _next(lines: queue.SimpleQueue[str], timeout: float) -> str:
    """The gateway's next line of output ('' when none comes within ``timeout``)."""
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""
