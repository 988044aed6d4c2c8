"""The packages form layers, and every import goes down (or stays within its package).

From the bottom: ``leyline`` (contracts), ``nissa`` (the hub), ``kasmina`` (the model),
``tolaria`` (training one model), ``tamiyo`` (controllers), ``simic`` (reinforcement learning),
``karn`` (analytics), ``runs`` (the run lifecycle), ``scripts`` (the command line). The test
reads every module's source, lazy imports inside functions included, and fails on an import
of a higher package, and on a private name or private module of another package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ("leyline", "nissa", "kasmina", "tolaria", "tamiyo", "simic", "karn", "runs", "scripts")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _module(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module imported, names taken from it) for every esper import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esper"):
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names if a.name.startswith("esper"))
    return out


def violations(src: Path = SRC) -> list[str]:
    """Every upward or private cross-package import under ``src``, as 'file:line: why'."""
    found = []
    for path in sorted((src / "esper").rglob("*.py")):
        module = _module(path, src)
        parts = module.split(".")
        if len(parts) < 2:
            continue
        package = parts[1]
        for line, target, names in _imports(path):
            tparts = target.split(".")
            if len(tparts) < 2 or tparts[1] == package:
                continue
            where = f"{path.relative_to(src.parent)}:{line}"
            if tparts[1] not in RANK or package not in RANK:
                found.append(f"{where}: {target} is in no layer")
            elif RANK[tparts[1]] > RANK[package]:
                found.append(f"{where}: {package} imports {target}, a higher layer")
            if any(p.startswith("_") for p in tparts[2:]):
                found.append(f"{where}: {package} imports the private module {target}")
            private = [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{where}: {package} imports private {', '.join(private)}")
    return found


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name for p in (SRC / "esper").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_imports_go_down_only_and_never_into_another_packages_privates() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "source", "problem"),
    [
        ("tolaria", "from esper.simic.ppo import PPOConfig\n", "a higher layer"),
        ("kasmina", "def f():\n    import esper.karn.sanctum\n", "a higher layer"),
        ("scripts", "from esper.leyline._catalogue import CATALOGUE\n", "the private module"),
        ("simic", "from esper.tolaria.environment import _helper\n", "private _helper"),
    ],
)
def test_the_walk_finds_each_kind_of_bad_import(
    tmp_path: Path, package: str, source: str, problem: str
) -> None:
    pkg = tmp_path / "esper" / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(source)
    (found,) = violations(tmp_path)
    assert problem in found
    assert f"esper/{package}/mod.py:" in found


@pytest.mark.parametrize(
    "path",
    ["esper.simic.gradient_collector", "esper.simic.vectorized", "esper.nissa",
     "esper.leyline", "esper.kasmina.slot", "esper.tolaria.governor", "esper.simic.comparison",
     "esper.simic.episodes", "esper.karn.sanctum.schema", "esper.karn.sanctum.aggregator",
     "esper.scripts.train"],
)  # fmt: skip
def test_the_public_paths_the_spec_and_plans_name_still_import(path: str) -> None:
    __import__(path)


NISSA_PARTS = {
    "hub": {"hub"},
    "record": {"hub", "record"},
    "prometheus": {"hub", "record", "prometheus"},
    "otel": {"hub", "otel"},
}
"""Inside ``esper.nissa``: what each part may import. The hub knows no backend; each backend
knows the hub, and none knows another, except that the Prometheus path reads the record
(backfill replays it). ``backends.py`` (which attaches them all), ``console.py`` and the
package's ``__init__`` stand above the parts."""


def nissa_violations(src: Path = SRC) -> list[str]:
    """Every import inside ``esper.nissa``'s parts that crosses a line ``NISSA_PARTS`` draws."""
    found = []
    root = src / "esper" / "nissa"
    for part, allowed in NISSA_PARTS.items():
        for path in sorted((root / part).rglob("*.py")):
            for line, target, _names in _imports(path):
                tparts = target.split(".")
                if tparts[:2] != ["esper", "nissa"]:
                    continue
                other = tparts[2] if len(tparts) > 2 else "(esper.nissa itself)"
                if other not in allowed:
                    found.append(f"{path.relative_to(src.parent)}:{line}: nissa.{part} imports "
                                 f"{target}")  # fmt: skip
    return found


def test_every_nissa_part_is_a_package_the_rule_names() -> None:
    parts = {p.name for p in (SRC / "esper" / "nissa").iterdir() if (p / "__init__.py").exists()}
    assert parts == set(NISSA_PARTS)


def test_the_hub_knows_no_backend_and_no_backend_another() -> None:
    assert nissa_violations() == []


def test_the_nissa_walk_finds_a_backend_that_knows_another(tmp_path: Path) -> None:
    part = tmp_path / "esper" / "nissa" / "otel"
    part.mkdir(parents=True)
    (part / "__init__.py").write_text("")
    (part / "mod.py").write_text("from esper.nissa.prometheus.output import PrometheusOutput\n")
    for other in set(NISSA_PARTS) - {"otel"}:
        (tmp_path / "esper" / "nissa" / other).mkdir()
    (found,) = nissa_violations(tmp_path)
    assert "nissa.otel imports esper.nissa.prometheus.output" in found
