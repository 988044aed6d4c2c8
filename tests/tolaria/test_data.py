"""Tasks: the embedded digits task and CIFAR-10 from a local python archive."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from esper.leyline import UsageError
from esper.tolaria.data import CIFAR_DIR, load_cifar10_task, load_digits_task, load_task


def _write_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(x) for x in rng.integers(0, 10, size=n)],
        b"batch_label": b"test",
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _cifar_dir(root: Path) -> Path:
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 20, i)
    _write_batch(folder / "test_batch", 10, 99)
    return root


def test_digits_task_is_embedded_and_split_80_20() -> None:
    task = load_digits_task()
    assert task.train_x.shape == (1437, 1, 8, 8)
    assert task.val_x.shape == (360, 1, 8, 8)
    assert (task.in_channels, task.n_classes) == (1, 10)
    assert abs(float(task.train_x.mean())) < 1e-3  # standardised


def test_cifar10_reads_the_python_batches_directory(tmp_path: Path) -> None:
    task = load_task("cifar10", _cifar_dir(tmp_path))
    assert task.train_x.shape == (100, 3, 32, 32)
    assert task.val_x.shape == (10, 3, 32, 32)
    assert task.train_y.max() < 10


def test_cifar10_reads_the_tar_gz_archive(tmp_path: Path) -> None:
    src = _cifar_dir(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / CIFAR_DIR, arcname=CIFAR_DIR)
    assert load_cifar10_task(data).train_x.shape == (100, 3, 32, 32)


def test_missing_or_bad_cifar_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="holds neither cifar-10-batches-py"):
        load_cifar10_task(tmp_path)
    root = _cifar_dir(tmp_path / "c")
    (root / CIFAR_DIR / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_cifar10_task(root)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    root = _cifar_dir(tmp_path)
    (root / CIFAR_DIR / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(UsageError, match=r"refusing to load posix\.system"):
        load_cifar10_task(root)
