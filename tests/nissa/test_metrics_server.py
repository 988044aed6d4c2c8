"""Serving ``/metrics``: the final scrape belongs to Prometheus, and no client stalls the rest."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper.leyline import BackendConfigError
from esper.nissa.prometheus import PrometheusOutput
from esper.nissa.prometheus.server import (
    HANDSHAKE_TIMEOUT_SECONDS,
    PROMETHEUS_HEADER,
    ScrapeTracker,
)
from tests._tls import self_signed

PROM_A = {"REMOTE_ADDR": "10.0.0.1", "HTTP_USER_AGENT": "Prometheus/2.42.0+ds",
          PROMETHEUS_HEADER: "10"}  # fmt: skip
PROM_B = {**PROM_A, "REMOTE_ADDR": "10.0.0.2"}  # the other half of an HA pair
CURL = {"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "curl/8.5.0"}


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"esper_up 1\n"]


def _get(tracker: ScrapeTracker, environ: dict[str, Any]) -> None:
    """One request answered in full, as the WSGI server does it (iterate, then close)."""
    body = tracker(dict(environ), lambda *_a: None)
    b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()


def test_a_plain_get_neither_ends_nor_extends_the_wait() -> None:
    """The bug: any GET counted as the final scrape, so a curl loop ended the linger before
    Prometheus read the final state."""
    tracker = ScrapeTracker(_app)
    _get(tracker, PROM_A)  # Prometheus scraped during the run
    mark = tracker.mark()  # the final state is delivered
    for _ in range(5):
        _get(tracker, CURL)
    result = tracker.wait_for_final(0.0, after=mark)
    assert result.complete is False
    assert result.missed == ("10.0.0.1 (Prometheus/2.42.0+ds)",)
    _get(tracker, PROM_A)
    result = tracker.wait_for_final(0.0, after=mark)
    assert result.complete is True
    assert result.scraped == ("10.0.0.1 (Prometheus/2.42.0+ds)",)


def test_every_prometheus_that_scraped_must_read_the_final_state() -> None:
    tracker = ScrapeTracker(_app)
    _get(tracker, PROM_A)
    _get(tracker, PROM_B)
    mark = tracker.mark()
    _get(tracker, PROM_A)
    result = tracker.wait_for_final(0.0, after=mark)
    assert result.missed == ("10.0.0.2 (Prometheus/2.42.0+ds)",)
    _get(tracker, PROM_B)
    assert tracker.wait_for_final(0.0, after=mark).complete


def test_a_scrape_that_arrived_before_the_mark_does_not_count() -> None:
    """A response rendered before the final state was delivered does not hold it, even when
    it is written in full after the mark."""
    tracker = ScrapeTracker(_app)
    early = tracker(dict(PROM_A), lambda *_a: None)  # arrives, not yet written
    mark = tracker.mark()
    b"".join(early)
    early.close()  # type: ignore[attr-defined]
    assert tracker.wait_for_final(0.0, after=mark).complete is False


def test_with_no_scraper_yet_the_first_prometheus_ends_the_wait() -> None:
    """A run shorter than the scrape interval: the first Prometheus to come reads it all."""
    tracker = ScrapeTracker(_app)
    mark = tracker.mark()
    done = threading.Event()
    results: list[Any] = []

    def wait() -> None:
        results.append(tracker.wait_for_final(30.0, after=mark))
        done.set()

    thread = threading.Thread(target=wait)
    thread.start()
    _get(tracker, CURL)
    assert tracker.wait_for_final(0.0, after=mark).scraped == ()  # curl never ends it
    _get(tracker, PROM_A)
    thread.join(30)
    (result,) = results
    assert result.complete
    assert result.missed == ()


def test_a_failed_response_is_not_a_read_of_the_final_state() -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [])
        return [b""]

    tracker = ScrapeTracker(broken)
    mark = tracker.mark()
    _get(tracker, PROM_A)
    assert tracker.wait_for_final(0.0, after=mark).scraped == ()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def tls_server(tls_files: tuple[Path, Path]) -> Iterator[tuple[int, ssl.SSLContext]]:
    cert, key = tls_files
    out = PrometheusOutput(cuda=False)
    port = out.serve(0, certfile=str(cert), keyfile=str(key))
    try:
        yield port, ssl.create_default_context(cafile=str(cert))
    finally:
        out.close()


def _scrape(port: int, context: ssl.SSLContext) -> str:
    url = f"https://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=context) as resp:
        return str(resp.read().decode())


def test_an_idle_tcp_connection_does_not_block_tls_scrapes(
    tls_server: tuple[int, ssl.SSLContext],
) -> None:
    """The bug: the handshake ran in the accept loop with no timeout, so one TCP health check
    that never spoke TLS stopped every scrape (EsperTrainerDown, a linger that never ended)."""
    port, context = tls_server
    with socket.create_connection(("127.0.0.1", port)):  # held open, silent
        assert "esper_seeds" in _scrape(port, context)
        assert "esper_seeds" in _scrape(port, context)


def test_a_slow_client_holds_only_its_own_connection(
    tls_server: tuple[int, ssl.SSLContext],
) -> None:
    """A client that completes the handshake and then sends its request a byte at a time."""
    port, context = tls_server
    raw = socket.create_connection(("127.0.0.1", port))
    slow = context.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        slow.sendall(b"GET /met")  # and then nothing more for now
        assert "esper_seeds" in _scrape(port, context)
        slow.sendall(b"rics HTTP/1.0\r\n\r\n")
        assert b"200" in slow.recv(64)
    finally:
        slow.close()


@pytest.mark.slow
def test_a_client_that_never_finishes_its_handshake_is_dropped(
    tls_server: tuple[int, ssl.SSLContext],
) -> None:
    port, _context = tls_server
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.settimeout(HANDSHAKE_TIMEOUT_SECONDS + 20)
        assert idle.recv(1) == b""  # the server closed it after its handshake timeout


def test_a_key_that_does_not_match_its_certificate_names_the_flag(
    tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _key = tls_files
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True,
                   capture_output=True)  # fmt: skip
    with pytest.raises(BackendConfigError, match=r"--metrics-tls-key: .*other\.pem is not the key"):
        PrometheusOutput(cuda=False).serve(0, certfile=str(cert), keyfile=str(other))


def _request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def served() -> Iterator[PrometheusOutput]:
    out = PrometheusOutput(cuda=False)
    out.serve(0)
    try:
        yield out
    finally:
        out.close()


def _port(out: PrometheusOutput) -> int:
    assert out.port is not None
    return out.port


def test_metrics_are_at_metrics_with_head_an_index_at_root_and_404_elsewhere(
    served: PrometheusOutput,
) -> None:
    port = _port(served)
    status, headers, body = _request(port, "GET", "/metrics")
    assert status == 200
    assert b"esper_run_info" in body or b"# HELP" in body
    assert int(headers["Content-Length"]) == len(body)
    status, head_headers, head_body = _request(port, "HEAD", "/metrics")
    assert status == 200
    assert head_body == b""
    assert head_headers["Content-Type"] == headers["Content-Type"]
    assert int(head_headers["Content-Length"]) > 0
    status, _, body = _request(port, "GET", "/")
    assert status == 200
    assert b"/metrics" in body
    for path in ("/other", "/metrics/extra", "/favicon.ico"):
        status, _, body = _request(port, "GET", path)
        assert status == 404, path
        assert b"/metrics" in body
    status, headers, _ = _request(port, "POST", "/metrics")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD, OPTIONS"


def test_past_the_connection_limit_a_scrape_is_told_to_retry_never_reset(
    served: PrometheusOutput,
) -> None:
    from esper.nissa.prometheus.server import MAX_CONNECTIONS, RETRY_AFTER_SECONDS
    from tests._stack import wait_until

    port = _port(served)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        server = served.server
        assert server is not None
        wait_until(lambda: _request(port, "GET", "/metrics")[0] == 503, 10,
                   "every slot held by a silent client")  # fmt: skip
        status, headers, body = _request(port, "GET", "/metrics")
        assert status == 503
        assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert b"retry after" in body
        refused = server.refused
        assert refused >= 2
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: _request(port, "GET", "/metrics")[0] == 200, 10, "the slots freed")
    assert server.refused >= refused


def test_a_storm_of_200_concurrent_scrapers_gets_answers_it_can_act_on(
    served: PrometheusOutput,
) -> None:
    """200 clients, 5 requests each, all at once: every request gets a 200 or a 503 with
    Retry-After; none is reset or left to time out."""
    port = _port(served)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(200)

    def client() -> None:
        start.wait()
        for _ in range(5):
            try:
                status, headers, _ = _request(port, "GET", "/metrics")
                got = str(status) if status != 503 or "Retry-After" in headers else "503-bare"
            except OSError as exc:
                got = f"error: {type(exc).__name__}"
            with lock:
                outcomes.append(got)

    threads = [threading.Thread(target=client) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == 1000
    assert set(outcomes) <= {"200", "503"}, sorted(set(outcomes))
    assert outcomes.count("200") > 0
