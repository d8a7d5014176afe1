"""A process that forks while another thread's ``Client.run`` waits (an embedded hub's
provider starting a pilot) must not hang in the child: the child drops the other threads'
locals, whose finalizers would close the parent's sockets under a lock held for good."""

from __future__ import annotations

import os
import threading
import time

from dlhub_hpc.client import _ThreadSockets


class _Channel:
    """What ``_ThreadSockets`` keeps per thread: a socket that is closed under a lock."""

    class _Sock:
        closed = False

    def __init__(self) -> None:
        self.sock = self._Sock()
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.sock.closed = True


def test_a_child_forked_during_a_call_exits() -> None:
    sockets = _ThreadSockets()
    holding, release = threading.Event(), threading.Event()

    def call_in_progress() -> None:
        channel = sockets.get(_Channel)
        with channel.lock:  # as _ThreadSocket.call holds it while it waits for a reply
            holding.set()
            release.wait()

    caller = threading.Thread(target=call_in_progress)
    caller.start()
    assert holding.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: the caller thread's local is dropped here
        os._exit(0)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung closing the parent's sockets")
    finally:
        release.set()
        caller.join()
