"""House rules that keep the project's shape: imports flow one way, and the conda mirror of the
dependencies agrees with pyproject.toml, its single source."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
UI_STACK = ("panel", "holoviews", "bokeh", "param", "hvplot")
FORBIDDEN = {  # package -> top-level modules it may never import
    "engine": {*UI_STACK, "landscapes", "app"},
    "landscapes": {*UI_STACK, "app"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_engine_and_landscapes_loads_no_ui_stack() -> None:
    code = (
        "import sys, engine, engine.run, engine.optimizers, landscapes\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {UI_STACK!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def _parse(req: str) -> tuple[str, str]:
    r = Requirement(req)
    return r.name.lower(), str(r.specifier)


def test_environment_yml_mirrors_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["dev"], *extras["notebooks"], *extras["peers"]]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.update(_parse(p) for p in dep["pip"] if not p.startswith("-e"))
        elif not dep.startswith(("python", "pip")):
            name, spec = _parse(dep)
            conda[name] = spec
    py_spec = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert Requirement(py_spec).specifier == Requirement("python" + project["requires-python"]).specifier
    mirrored = {**pip, **conda}
    expected = {CONDA_NAMES.get(n, n): s for n, s in map(_parse, wanted)}
    assert mirrored == expected
