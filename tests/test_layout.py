"""The package layout the README's layer table describes: imports point down, packages stay small.

Every `hcollectives` import of every module (TYPE_CHECKING ones and those
inside functions included) must name a layer at or below the importing
module's own; a new module must be placed in the table below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hcollectives"

# Bottom to top, as in the README's table.
LAYERS = ["errors", "algorithms", "protocol", "transport", "store", "services", "launch", "hadoop",
          "driver", "jobs", "bench", "cli"]
TOP = len(LAYERS)  # the package's __init__ and __main__ re-export from anywhere


def _layer(module: str) -> int:
    """Layer of a dotted module name inside hcollectives ('' = the package itself)."""
    first = module.split(".")[0]
    if first in ("", "__init__", "__main__"):
        return TOP
    return LAYERS.index(first)


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path, source: str | None = None) -> list[str]:
    """Dotted names (relative to hcollectives) that *path* (or *source*, placed at *path*)
    imports from the package."""
    here = path.relative_to(ROOT).with_suffix("").parts
    package = list(here[:-1])  # the importing module's package, relative to hcollectives
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x, y: each name is a module
                    found += [".".join(base + [alias.name]) for alias in node.names]
                    continue
                found.append(target)
            elif node.module and node.module.startswith("hcollectives."):
                found.append(node.module.removeprefix("hcollectives."))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("hcollectives.") for a in node.names if a.name.startswith("hcollectives.")]
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    own = _layer(module)
    upward = [name for name in _imports(path) if _layer(name) > own]
    assert not upward, f"{module} (layer {LAYERS[own] if own < TOP else 'top'}) imports from above: {upward}"


def test_every_module_has_a_layer() -> None:
    for path in _modules():
        _layer(".".join(path.relative_to(ROOT).with_suffix("").parts))  # ValueError if not in LAYERS


def test_packages_stay_small() -> None:
    for package in [p for p in ROOT.rglob("*") if p.is_dir() and p.name != "__pycache__"]:
        modules = [p for p in package.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 10, f"{package.relative_to(ROOT)} has {len(modules)} modules: split it by job"


def test_the_checker_sees_an_upward_import() -> None:
    """The check itself can fail: a services module reaching into jobs, however it is written."""
    node = ROOT / "services" / "node.py"
    for source in ("from ..jobs.mrjob_job import MRCollectiveJob\n",
                   "from .. import jobs\n",
                   "def f():\n    from hcollectives.driver import loop\n"):
        imported = _imports(node, source)
        assert imported and all(_layer(name) > _layer("services.node") for name in imported), source


def test_the_readme_layer_table_names_every_module() -> None:
    """The README's table is where a reader looks for a module: it must name each one
    on its package's row (the row that names the package's directory)."""
    readme = (ROOT.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`" in line]
    for path in _modules():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(ROOT)
        top = f"`{relative.parts[0]}/`" if len(relative.parts) > 1 else f"`{path.name}`"
        row = next((r for r in rows if top in r), None)
        assert row is not None, f"README's layer table has no row for {top}"
        assert f"`{path.name}`" in row, f"README's layer table does not name {relative} on the {top} row"
