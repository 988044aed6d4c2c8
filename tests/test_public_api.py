"""Each package's ``__all__`` is sorted, complete and importable."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import esper

PUBLIC = ["esper.leyline", "esper.nissa"]


@pytest.mark.parametrize("name", PUBLIC)
def test_all_is_sorted_and_names_every_public_attribute(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    # Constants, then classes, then functions (isort style, as ruff's RUF022 keeps it).
    assert exported == sorted(exported, key=lambda n: (0 if n.isupper() else 1 + n[0].islower(), n))
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and not isinstance(v, type(importlib)) and n != "annotations"
    }
    assert public == set(exported)


def test_every_subpackage_opens_with_a_one_line_role() -> None:
    for info in pkgutil.walk_packages(esper.__path__, "esper."):
        if not info.ispkg:
            continue
        doc = importlib.import_module(info.name).__doc__
        assert doc, f"{info.name} has no docstring"
        assert "\n" not in doc.strip(), f"{info.name}: the role should be one line"


def test_leyline_imports_nothing_else_of_esper() -> None:
    import ast
    from pathlib import Path

    root = Path(esper.__file__).parent / "leyline"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("esper.") or node.module.startswith(
                    "esper.leyline"
                ), f"{path.name} imports {node.module}"
