"""Serving ``/metrics``: an HTTP(S) server that no one client can stall, and scrape tracking.

``MetricsServer`` serves what a render function returns (the exporter's cached exposition,
``esper.nissa.prometheus.exposition``) with a thread per connection. With TLS, the handshake runs
in that connection's thread under ``HANDSHAKE_TIMEOUT_SECONDS`` (the standard library's wrapped
listening socket would run it in the accept loop with no timeout, so one idle TCP connection,
a health check or a half-open client, would block every scrape). Every connection reads and
writes under ``IO_TIMEOUT_SECONDS``, so a slow client holds only its own thread, and not for long.

``ScrapeTracker`` tells Prometheus apart from everything else that GETs ``/metrics``: a
Prometheus scrape carries ``X-Prometheus-Scrape-Timeout-Seconds``; a person's curl or a health
probe does not. Scrapers are told apart by address and user agent (the two halves of an HA pair
differ in address, or in user agent behind one proxy). ``wait_for_final`` is what
``--metrics-linger`` waits on: every Prometheus that scraped during the run has read the final
state, bounded by a deadline, naming the ones that did not.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from esper.leyline import BackendConfigError

MAX_CONNECTIONS = 64
"""Connections served at once. Past it a connection is answered at once with 503 and
``Retry-After`` (never left to time out): a storm of scrapers gets a reply it can act on, and the
training process a bounded number of threads."""
LISTEN_BACKLOG = 1024
"""Connections the kernel queues before accept (socketserver's default of 5 reset clients of a
storm before any reply)."""
RETRY_AFTER_SECONDS = 1
REFUSE_READ_SECONDS = 2.0
"""How long a refused connection may take to send its request before the 503 goes anyway."""
METRICS_PATH = "/metrics"

HANDSHAKE_TIMEOUT_SECONDS = 10.0
"""How long a client may take over the TLS handshake before its connection is dropped."""
IO_TIMEOUT_SECONDS = 30.0
"""How long a connection may go without sending or reading a byte (a scrape is one request)."""

PROMETHEUS_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"
"""WSGI name of the header every Prometheus scrape carries (Prometheus 2.x and 3.x)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The files of ``--metrics-tls-cert``, ``--metrics-tls-key`` and
    ``--metrics-tls-client-ca`` (client certificates required when ``client_ca`` is given)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The server's TLS context; BackendConfigError naming the flag and file at fault."""
        for flag, path in (
            ("--metrics-tls-cert", self.cert),
            ("--metrics-tls-key", self.key),
            ("--metrics-tls-client-ca", self.client_ca),
        ):
            if path is not None and not path.is_file():
                raise BackendConfigError(f"{flag}: no such file: {path}")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(certfile=self.cert, keyfile=self.key)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if "KEY_VALUES_MISMATCH" in str(reason).upper():
                raise BackendConfigError(
                    f"--metrics-tls-key: {self.key} is not the key of the certificate "
                    f"--metrics-tls-cert {self.cert}"
                ) from exc
            raise BackendConfigError(
                f"--metrics-tls-cert / --metrics-tls-key: cannot load {self.cert} with "
                f"{self.key}: {reason}"
            ) from exc
        except OSError as exc:
            raise BackendConfigError(
                f"--metrics-tls-cert / --metrics-tls-key: cannot read {self.cert} or "
                f"{self.key}: {exc.strerror or exc}"
            ) from exc
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise BackendConfigError(
                    f"--metrics-tls-client-ca: cannot load {self.client_ca}: {exc}"
                ) from exc
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True, slots=True)
class LingerResult:
    """What the wait for the final scrape found."""

    scraped: tuple[str, ...]
    """The Prometheus scrapers that read the final state."""
    missed: tuple[str, ...]
    """The Prometheus scrapers seen during the run that did not read it in time."""

    @property
    def complete(self) -> bool:
        """Every Prometheus that scraped the run (and at least one) read the final state."""
        return bool(self.scraped) and not self.missed


class ScrapeTracker:
    """Wraps the ``/metrics`` WSGI app to know which Prometheus read what, and when.

    A response counts once WSGI has called its ``close()``, that is, once it has been written in
    full. Requests are numbered as they arrive; a response to a request numbered after
    ``mark`` was rendered after it, so it holds everything delivered before the mark.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._arrived = 0
        self._answered: dict[str, int] = {}  # scraper -> number of its latest full response
        self._cond = threading.Condition()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        with self._cond:
            self._arrived += 1
            seq = self._arrived
        scraper = self.scraper(environ)
        if scraper is None:  # curl, a probe, a browser: served, never counted
            return self.app(environ, start_response)
        status: list[str] = []

        def recording_start_response(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *rest)

        body = self.app(environ, recording_start_response)
        return _Response(body, lambda: self._answer(scraper, seq, status))

    @staticmethod
    def scraper(environ: dict[str, Any]) -> str | None:
        """``address (user agent)`` for a Prometheus scrape; None for any other client."""
        if PROMETHEUS_HEADER not in environ:
            return None
        agent = environ.get("HTTP_USER_AGENT") or "no user agent"
        return f"{environ.get('REMOTE_ADDR', '?')} ({agent})"

    def _answer(self, scraper: str, seq: int, status: list[str]) -> None:
        if not status or not status[0].startswith("200"):
            return
        with self._cond:
            self._answered[scraper] = max(self._answered.get(scraper, 0), seq)
            self._cond.notify_all()

    def mark(self) -> int:
        """The number of the latest request to arrive: later ones see the state as of now."""
        with self._cond:
            return self._arrived

    def wait_for_final(self, timeout: float, *, after: int | None = None) -> LingerResult:
        """Wait until every Prometheus that has scraped has read a response rendered after
        ``after`` (default: now), or, when none has scraped yet, until one has; at most
        ``timeout`` seconds. A client that is not Prometheus neither ends nor extends it."""
        with self._cond:
            mark = self._arrived if after is None else after
            known = set(self._answered)

            def done() -> bool:
                read = {s for s, n in self._answered.items() if n > mark}
                return bool(read) and known <= read

            self._cond.wait_for(done, timeout)
            read = tuple(sorted(s for s, n in self._answered.items() if n > mark))
            missed = tuple(sorted(s for s in known if self._answered[s] <= mark))
            return LingerResult(scraped=read, missed=missed)

    @property
    def scrapers(self) -> tuple[str, ...]:
        """Every Prometheus that has read ``/metrics`` so far."""
        with self._cond:
            return tuple(sorted(self._answered))


class _Response:
    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body = body
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        self._done()


INDEX = b"Esper trainer: its Prometheus metrics are at /metrics\n"
ALLOW = "GET, HEAD, OPTIONS"


def metrics_app(render: Callable[[], bytes], content_type: str) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving ``render()`` at ``/metrics`` (GET, and HEAD: the same headers, no
    body), a one-line index at ``/``, and 404 elsewhere, as Prometheus's own exporters do; the
    Prometheus text format whatever the Accept header asks, uncompressed (a scrape on loopback
    or the node's network is cheaper sent than gzipped)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", ALLOW), ("Content-Length", "0")])
            return [b""]
        if method not in ("GET", "HEAD"):
            body = f"# HTTP 405 Method Not Allowed: {method}; use {ALLOW}\n".encode()
            start_response("405 Method Not Allowed", [("Allow", ALLOW), _length(body)])
            return [body]
        if path == METRICS_PATH:
            body, kind = render(), content_type
        elif path == "/":
            body, kind = INDEX, "text/plain; charset=utf-8"
        else:
            body = f"# HTTP 404 Not Found: {path}; the metrics are at {METRICS_PATH}\n".encode()
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                             _length(body)])  # fmt: skip
            return [b""] if method == "HEAD" else [body]
        start_response("200 OK", [("Content-Type", kind), _length(body)])
        return [b""] if method == "HEAD" else [body]

    return app


def _length(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


BUSY = (
    f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
).encode()
BUSY_BODY = (
    f"# HTTP 503: {MAX_CONNECTIONS} scrapes are being served at once; retry after "
    f"{RETRY_AFTER_SECONDS} s\n"
).encode()


class _QuietHandler(WSGIRequestHandler):
    timeout = IO_TIMEOUT_SECONDS  # StreamRequestHandler sets it on the connection

    def log_message(self, format: str, *args: Any) -> None:
        """A scrape is not worth a log line."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck client never holds up the process's exit
    request_queue_size = LISTEN_BACKLOG
    tls: ssl.SSLContext | None = None
    refused = 0
    """Connections answered 503 because MAX_CONNECTIONS were being served (only goes up)."""

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._refused_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._slots.acquire(blocking=False):
            super().process_request(request, client_address)  # a thread, which releases
            return
        with self._refused_lock:
            self.refused += 1
        threading.Thread(target=self._refuse, args=(request,), daemon=True).start()

    def _handshake(self, request: Any) -> Any:
        """The connection, over TLS when served so (None when the handshake failed). On the
        connection's own thread: a client that never finishes its handshake costs this thread
        HANDSHAKE_TIMEOUT_SECONDS, and no other scrape anything."""
        if self.tls is None:
            return request
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            return self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            self.shutdown_request(request)
            return None

    def _refuse(self, request: Any) -> None:
        """Answer 503 with Retry-After without reading the request or rendering anything."""
        conn = self._handshake(request)
        if conn is None:
            return
        try:
            # Read the request's head first: closing a socket with unread bytes resets the
            # connection, and the client would see a reset instead of the reply.
            conn.settimeout(REFUSE_READ_SECONDS)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            conn.sendall(BUSY + f"Content-Length: {len(BUSY_BODY)}\r\n\r\n".encode() + BUSY_BODY)
        except OSError:
            pass
        finally:
            self.shutdown_request(conn)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            conn = self._handshake(request)
            if conn is not None:
                super().process_request_thread(conn, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or times out mid-request is its own business."""


class MetricsServer:
    """``/metrics`` (what ``app`` serves) on addr:port (0 picks a free port), optionally over
    TLS."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        port: int,
        addr: str,
        tls: TlsFiles | None = None,
    ) -> None:
        """Binds at once: a port in use or a bad TLS file is a BackendConfigError."""
        context = tls.context() if tls is not None else None
        try:
            family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            raise BackendConfigError(f"cannot serve /metrics on {addr}: {exc}") from exc

        class Server(_Server):
            address_family = family

        self.tracker = ScrapeTracker(app)
        try:
            self._httpd = make_server(addr, port, self.tracker, Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise BackendConfigError(
                f"cannot serve /metrics on {addr}:{port}: {exc.strerror or exc}"
            ) from exc
        self._httpd.tls = context
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="esper-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    @property
    def refused(self) -> int:
        """Connections answered 503 (busy) so far."""
        return self._httpd.refused

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
