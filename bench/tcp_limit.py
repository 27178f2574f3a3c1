"""The loopback single-stream TCP limit: one Python sender, one receiver, in two processes.

    python bench/tcp_limit.py MEGABYTES   → prints bytes/second
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

CHUNK = 1 << 20


def receive(port: int, total: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        got = 0
        buffer = bytearray(CHUNK)
        while got < total:
            n = sock.recv_into(buffer)
            if not n:
                break
            got += n


def main() -> None:
    total = int(sys.argv[1]) * CHUNK
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        receiver = subprocess.Popen([sys.executable, __file__, "--receive", str(port),
                                     str(total)])
        conn, _ = server.accept()
        payload = bytes(CHUNK)
        started = time.perf_counter()
        with conn:
            for _ in range(total // CHUNK):
                conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            receiver.wait(timeout=120)
        print(total / (time.perf_counter() - started))


if __name__ == "__main__":
    if sys.argv[1] == "--receive":
        receive(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
