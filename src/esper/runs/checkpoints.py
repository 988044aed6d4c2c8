"""Checkpoints: written whole (a temporary file, then a rename), read with ``weights_only=True``
(tensors and plain values only, never code), and the run shape they record, so a resume says
what it changes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from esper.leyline import TelemetryEvent, TelemetryEventType, UsageError, emit_event
from esper.runs.config import RunConfig

ET = TelemetryEventType


def save_checkpoint(
    payload: dict[str, Any],
    path: Path,
    *,
    episodes: int,
    emit: Callable[[TelemetryEvent], None] | None,
) -> str:
    """Write ``payload`` with ``torch.save`` atomically (a temp file, then a rename, so a crash
    never leaves a torn checkpoint) and emit CHECKPOINT_SAVED unless ``emit`` is None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    if emit is not None:
        emit_event(
            emit,
            ET.CHECKPOINT_SAVED,
            {
                "path": str(path),
                "episodes_completed": episodes,
                "size_bytes": os.path.getsize(path),
            },
            message=f"checkpoint saved to {path}",
        )
    return str(path)


SHAPE_FIELDS = ("mode", "task", "n_envs", "world_size", "max_epochs", "seed")
"""What a checkpoint records of the run that wrote it, to say what a resume changes."""


def run_shape(config: RunConfig) -> dict[str, Any]:
    """The run's shape as a checkpoint records it (plain values: loads with weights_only)."""
    return {"mode": config.mode, "task": config.task, "n_envs": config.n_envs,
            "world_size": config.ranks.world_size, "max_epochs": config.max_epochs,
            "seed": config.seed}  # fmt: skip


def resume_differences(checkpoint: dict[str, Any], config: RunConfig) -> list[str]:
    """How this run differs from the one that wrote ``checkpoint`` (``n_envs 1 -> 2``): the
    policy's shapes fit, but the history (episodes per batch, what a batch number means) is
    another run's. A checkpoint of an older Esper records no shape: that is said too."""
    saved = checkpoint.get("run")
    if not isinstance(saved, dict):
        return ["the checkpoint records no run shape (made by an older Esper)"]
    now = run_shape(config)
    return [f"{k} {saved.get(k)} -> {now[k]}" for k in SHAPE_FIELDS if saved.get(k) != now[k]]


def _unloadable(exc: BaseException) -> str:
    """Why torch could not load a file, without torch's advice to load it unsafely (with
    ``weights_only=False``, or by allowlisting globals): Esper never runs a file's code."""
    text = str(exc).strip()
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = found.group(1) if found else (text.splitlines() or [type(exc).__name__])[0]
    reason = re.split(r"\s*(?:Please use `torch\.serialization|Re-running `torch\.load`|"
                      r"Check the documentation)", reason)[0]  # fmt: skip
    return reason.strip().rstrip(".") or type(exc).__name__


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True`` (tensors and plain values
    only). An unreadable file is a UsageError naming ``--resume``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(
            f"--resume {path}: not a loadable checkpoint ({_unloadable(exc)}); Esper loads "
            "checkpoints as tensors and plain values only, and never runs code from a file"
        ) from exc
    if not isinstance(ckpt, dict):
        raise UsageError(f"--resume {path}: not an Esper checkpoint")
    return ckpt
