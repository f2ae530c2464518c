"""Inside a web artifact's sandbox: bridge a Unix socket to the program's TCP port.

The sandbox has no network but its own loopback, so the program's HTTP server is
unreachable from outside; the agent reaches it through this socket instead (the
folder it lives in is shared with the agent). Standard library only: it runs on
the VM's own Python, bound read-only into the sandbox.

Usage: python3 relay.py SOCKET_PATH PORT
"""

import contextlib
import os
import socket
import sys
import threading
import time

CONNECT_WAIT_S = 30.0  # for the program to start listening (compilers and imports are slow)


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def serve(path: str, port: int) -> None:
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        try:
            upstream = connect(port)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
