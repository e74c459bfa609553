"""The sockets of a peer process: a listening port, direct connections, one reader thread.

A peer process talks to the coordinator over one TCP connection (control, metrics) and to
its neighbours over *direct* connections: it listens on its own port on 127.0.0.1, and
to send to neighbour j it connects to j's port (taken from the directory) once and keeps
that connection. A connection carries frames one way only (from the side that opened it),
so the receiver never has to write to it.

One reader thread watches the listening socket, the coordinator connection and every
inbound connection (``selectors``), cuts the byte streams into frames with
:func:`tinytwin.wire.frame.frame_length` and puts ``("frame", conn, bytes)`` and
``("eof", conn)`` events on a queue. It never interprets a frame: authentication and
every protocol check run in the main thread (:class:`tinytwin.emulate.peer.PeerRuntime`).
Because the reader always drains its sockets, two peers sending large models to each
other at the same moment cannot deadlock on full socket buffers.

A header that cannot be a valid frame (or announces more than the largest legitimate
frame) is reported as ``("bad_header", conn, reason)`` and that connection is closed:
a byte stream cannot be resynchronised.

With ``tls_ca`` (``emulate --tls``) every connection is TLS: this peer serves the run's
certificate (it listens on the same address as the coordinator) and checks the coordinator's
and its neighbours' against the run's CA (:mod:`tinytwin.emulate.tls`). An inbound handshake
runs in the reader thread with a time limit, so a client that never completes one cannot stall it.
"""

from __future__ import annotations

import queue
import selectors
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from tinytwin.emulate.tls import client_context, server_context
from tinytwin.emulate.wire_np import load_wire

COORDINATOR_CONN = 0
"""Connection id of the coordinator connection (inbound peer connections count from 1)."""

#: Stack of the reader thread: it only shuffles bytes; glibc's default (8 MiB) would count
#: against the process's RLIMIT_DATA.
READER_STACK_BYTES = 512 * 1024
HANDSHAKE_TIMEOUT_S = 5.0  # an inbound TLS handshake must finish within this


class PeerNet:
    """Listening socket, coordinator connection, outbound connections and the reader thread."""

    def __init__(self, max_frame: int, tls_ca: str | None = None) -> None:
        self.frame, _ = load_wire()
        self.tls_client = client_context(tls_ca) if tls_ca else None
        self.tls_server = server_context(Path(tls_ca).parent) if tls_ca else None
        self.max_frame = max_frame
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.coordinator: socket.socket | None = None
        self.ports: dict[int, int] = {}  # peer -> listening port (the directory)
        self.out: dict[int, socket.socket] = {}  # peer -> our connection to it
        self._buf: dict[int, bytearray] = {}
        self._next_conn = 1
        self._thread: threading.Thread | None = None

    # ---- main thread ----------------------------------------------------------------
    def _dial(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        if self.tls_client is not None:
            sock = self.tls_client.wrap_socket(sock, server_hostname=host)
        sock.settimeout(None)
        return sock

    def connect_coordinator(self, host: str, port: int, timeout: float = 30.0) -> None:
        sock = self._dial(host, port, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.coordinator = sock
        self._register(sock, COORDINATOR_CONN)

    def start(self) -> None:
        old = threading.stack_size(READER_STACK_BYTES)
        try:
            self._thread = threading.Thread(target=self._loop, name="peer-reader", daemon=True)
            self._thread.start()
        finally:
            threading.stack_size(old)

    def send_coordinator(self, data: bytes) -> None:
        assert self.coordinator is not None
        self.coordinator.sendall(data)

    def send(self, peer: int, data: bytes) -> bool:
        """Write one frame to ``peer`` over our direct connection (opened on first use).

        Returns False when the peer cannot be reached (not in the directory, refused,
        reset): the frame is lost, as on a radio link whose receiver has gone."""
        sock = self.out.get(peer)
        if sock is None:
            port = self.ports.get(peer)
            if port is None:
                return False
            try:
                sock = self._dial("127.0.0.1", port, 10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                return False
            self.out[peer] = sock
        try:
            sock.sendall(data)
            return True
        except OSError:
            self.out.pop(peer, None)
            sock.close()
            return False

    def close(self) -> None:
        for sock in self.out.values():
            sock.close()
        self.out.clear()

    # ---- reader thread ----------------------------------------------------------------
    def _register(self, sock: socket.socket, conn: int) -> None:
        self._buf[conn] = bytearray()
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _loop(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(True)
        if self.tls_server is not None:
            try:
                sock.settimeout(HANDSHAKE_TIMEOUT_S)
                sock = self.tls_server.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
            except (OSError, ssl.SSLError):
                sock.close()
                return
        conn = self._next_conn
        self._next_conn += 1
        self._register(sock, conn)

    def _read(self, sock: socket.socket, conn: int) -> None:
        try:
            chunk = sock.recv(1 << 20)
            while isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes select cannot see
                chunk += sock.recv(sock.pending())
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sock, conn)
            self.events.put(("eof", conn))
            return
        buf = self._buf[conn]
        buf += chunk
        fm = self.frame
        while len(buf) >= fm.HEADER_SIZE:
            try:
                total = fm.frame_length(bytes(buf[: fm.HEADER_SIZE]))
                if total > self.max_frame:
                    raise fm.FrameError("oversized", f"frame of {total} bytes > {self.max_frame}")
            except fm.FrameError as exc:
                self._drop(sock, conn)
                self.events.put(("bad_header", conn, exc.reason, exc.detail))
                return
            if len(buf) < total:
                break
            self.events.put(("frame", conn, bytes(buf[:total])))
            del buf[:total]

    def _drop(self, sock: socket.socket, conn: int) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        self._buf.pop(conn, None)
