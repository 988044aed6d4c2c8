"""argparse value types: each rejects a bad value with a message argparse puts after the flag."""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

SEED_MAX = 2**32 - 1
"""The largest seed every generator a run seeds takes (NumPy's limit; torch's is 2**64 - 1)."""

FAULT_KINDS: tuple[str, ...] = ("exploding-gradients", "nan-loss", "loss-spike", "slow-rank")


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def float_range(
    lo: float, hi: float | None = None, *, lo_open: bool = False
) -> Callable[[str], float]:
    """A finite float above lo (or at it, unless lo_open) and at most hi."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_lo = value <= lo if lo_open else value < lo
        if value != value or bad_lo or (hi is not None and value > hi):  # noqa: PLR0124 - NaN
            op = ">" if lo_open else ">="
            bound = f"{op} {lo}" + ("" if hi is None else f" and <= {hi}")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def device(text: str) -> str:
    """A torch device (cpu, cuda, cuda:N or mps), or several separated by commas."""
    for part in text.split(","):
        if not _DEVICE.match(part.strip()):
            raise argparse.ArgumentTypeError(
                f"expected cpu, cuda, cuda:N or mps (comma-separated for several), got {part!r}"
            )
    return text


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return path


def host_address(text: str) -> str:
    """An IP address or a hostname to bind to."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", text):
            raise argparse.ArgumentTypeError(f"not an IP address or hostname: {text!r}") from None
    return text


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of this host's network interface ``name`` (Linux), or None when it has
    none."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def bind_address(text: str) -> str:
    """An address to bind to: an IP address, a hostname, or the name of one of this host's
    network interfaces (``docker0``: the Docker bridge), which stands for its IPv4 address."""
    if text in {name for _, name in socket.if_nameindex()}:
        address = interface_ipv4(text)
        if address is None:
            raise argparse.ArgumentTypeError(f"network interface {text!r} has no IPv4 address")
        return address
    return host_address(text)


def http_url(text: str) -> str:
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault to inject: ``kind`` at ``epoch`` of each episode's first env."""

    kind: str
    epoch: int

    def __str__(self) -> str:
        return f"{self.kind}@{self.epoch}"


def fault(text: str) -> FaultSpec:
    """KIND@EPOCH, e.g. nan-loss@4."""
    kind, sep, epoch_text = text.partition("@")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KIND@EPOCH, got {text!r}")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind {kind!r} in {text!r} (known: {', '.join(FAULT_KINDS)})"
        )
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"EPOCH must be an integer in {text!r}") from None
    if epoch < 1:
        raise argparse.ArgumentTypeError(f"EPOCH must be >= 1 in {text!r}")
    return FaultSpec(kind, epoch)


EARLIEST_INSTANT = 946_684_800.0
"""2000-01-01T00:00:00Z: no run recorded before it (an instant of 0 or -1 is a typo, not 1970)."""


def instant(text: str) -> float:
    """A point in time: RFC 3339 (``2026-12-01T09:00:00Z``; no zone means UTC) or Unix
    seconds, from 2000-01-01 to now. Returns Unix seconds."""
    import time  # noqa: PLC0415 - only this parser needs it
    from datetime import UTC, datetime  # noqa: PLC0415

    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an RFC 3339 time (2026-12-01T09:00:00Z) or Unix seconds, got {text!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    now = time.time()
    if not EARLIEST_INSTANT <= value <= now:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be a real instant from 2000-01-01T00:00:00Z ({EARLIEST_INSTANT:.0f}) to now "
            f"({now:.0f}), got {text!r}"
        )
    return value


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                     "y": 31536000}  # fmt: skip


def prometheus_duration(text: str) -> float:
    """A duration as Prometheus spells one (``15d``, ``12h``, ``90m``); returns seconds."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"expected a Prometheus duration such as 15d, 12h or 90m, got {text!r}"
        )
    return int(m.group(1)) * _DURATION_SECONDS[m.group(2)]
