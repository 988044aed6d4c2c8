"""Tasks: the embedded digits task and CIFAR-10 from a local copy of its python archive.

Whole datasets live as tensors on the env's device ("preloaded"), so a batch is an index
slice: no worker processes, no per-batch host-to-device copies.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from esper.leyline import UsageError

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


@dataclass(frozen=True, slots=True)
class TaskData:
    """A classification task held as tensors."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    in_channels: int
    n_classes: int

    def to(self, device: str | torch.device) -> TaskData:
        return TaskData(
            self.name,
            self.train_x.to(device),
            self.train_y.to(device),
            self.val_x.to(device),
            self.val_y.to(device),
            self.in_channels,
            self.n_classes,
        )


def _standardize(train: np.ndarray, val: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return (
        torch.from_numpy(((train - mean) / std).astype(np.float32)),
        torch.from_numpy(((val - mean) / std).astype(np.float32)),
    )


def load_digits_task(seed: int = 0) -> TaskData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); a fixed
    80/20 split so every run and env sees the same validation set."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy import, only for this task

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    train_idx, val_idx = order[:cut], order[cut:]
    train_x, val_x = _standardize(x[train_idx], x[val_idx])
    return TaskData(
        "digits",
        train_x,
        torch.from_numpy(y[train_idx]),
        val_x,
        torch.from_numpy(y[val_idx]),
        1,
        10,
    )


class _CifarUnpickler(pickle.Unpickler):
    """Loads CIFAR-10 batch files, which are pickles: only the numpy reconstruction they need
    is allowed, so a tampered file cannot run code."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),  # bytes pickled at protocol 2 by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise UsageError(f"{where}: not a CIFAR-10 python batch ({exc})") from exc
    if len(data) != len(labels):
        raise UsageError(f"{where}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar_files(data_dir: Path) -> dict[str, tuple[bytes, str]]:
    names = (*CIFAR_TRAIN, CIFAR_TEST)
    folder = data_dir / CIFAR_DIR
    if folder.is_dir():
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UsageError(f"--data-dir: {folder} lacks {', '.join(missing)}")
        return {n: ((folder / n).read_bytes(), str(folder / n)) for n in names}
    archive = data_dir / CIFAR_ARCHIVE
    if archive.is_file():
        out = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for n in names:
                    try:
                        member = tar.extractfile(f"{CIFAR_DIR}/{n}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise UsageError(f"--data-dir: {archive} lacks {CIFAR_DIR}/{n}")
                    out[n] = (member.read(), f"{archive}:{CIFAR_DIR}/{n}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise UsageError(
                f"--data-dir: {archive} is not a readable .tar.gz archive ({exc})"
            ) from None
        return out
    raise UsageError(f"--data-dir: {data_dir} holds neither {CIFAR_DIR}/ nor {CIFAR_ARCHIVE}")


def load_cifar10_task(data_dir: Path) -> TaskData:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py`` or ``data_dir/cifar-10-python.tar.gz``."""
    files = _cifar_files(Path(data_dir))
    parts = [_read_cifar_batch(*files[n]) for n in CIFAR_TRAIN]
    train_x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(*files[CIFAR_TEST])
    tx, vx = _standardize(train_x, test_x.astype(np.float32) / 255.0)
    return TaskData("cifar10", tx, torch.from_numpy(train_y), vx, torch.from_numpy(test_y), 3, 10)


def load_task(name: str, data_dir: Path | None = None) -> TaskData:
    """The task named on the command line (on the CPU; move it with ``.to``)."""
    if name == "digits":
        return load_digits_task()
    if name == "cifar10":
        if data_dir is None:
            raise UsageError("--task cifar10 needs --data-dir")
        return load_cifar10_task(data_dir)
    raise UsageError(f"--task: unknown task {name!r}")
