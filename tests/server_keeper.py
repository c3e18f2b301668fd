"""Run a server for the test session and end it when the session's main pytest process is gone.

    python server_keeper.py OWNER_PID -- prefect server start --host 127.0.0.1 --port PORT

The test session's Prefect server is shared by the xdist workers, so it cannot die with the worker that started it
(that worker may finish first). It runs under this keeper instead, in its own process group: the main pytest
process stops the group when the session ends (tests/session_servers.py), and the keeper stops the server
itself, within a second, when that process has died without doing so (killed, crashed), so no server outlives its
session.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from session_servers import alive  # beside this file (sys.path[0] when run as a script)


def main(argv: list[str]) -> int:
    owner, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: server_keeper.py OWNER_PID -- COMMAND...")
    server = subprocess.Popen(command)
    stop = False

    def request_stop(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    while not stop and alive(int(owner)) and server.poll() is None:
        time.sleep(1.0)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
