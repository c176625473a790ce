"""The house rules that keep each seam in one place (DESIGN.md): checked on the source and in fresh processes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import heatmap

ROOT = Path(__file__).resolve().parents[1]
# the package's own modules: not the tests, scripts and benchmarks, nor a build, nor hidden folders (.git, or
# the .venv the README's quick start makes in the checkout)
LIBRARY = [path for path in ROOT.rglob("*.py")
           if not {"tests", "scripts", "benchmarks", "build"} & set(path.relative_to(ROOT).parts)
           and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def fresh_import(code: str) -> set[str]:
    """The top-level packages loaded after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", ["heatmap.explainers.lrp", "heatmap.explainers.aggregation",
                                    "heatmap.explainers.driver"])
def test_the_math_imports_no_model_library(module):
    loaded = fresh_import(f"import {module}")
    assert "torch" in loaded and not {"timm", "open_clip", "torchvision", "transformers"} & loaded


def test_listing_methods_and_the_cli_import_no_torch():
    assert "torch" not in fresh_import("import heatmap; heatmap.methods()")
    assert "torch" not in fresh_import("import heatmap.cli.app")


def test_explainers_know_no_model_library_and_models_only_through_protocols():
    for path in (ROOT / "explainers").glob("*.py"):
        imports = imported_modules(path)
        assert not {name for name in imports if name.split(".")[0] in ("timm", "open_clip", "transformers")}, path
        from_models = {name for name in imports if name.startswith("heatmap.models")}
        assert from_models <= {"heatmap.models.protocols"}, (path, from_models)


def test_no_library_module_imports_the_cli():
    for path in LIBRARY:
        if "cli" in path.relative_to(ROOT).parts:
            continue
        assert not {name for name in imported_modules(path) if name.startswith("heatmap.cli")}, path


def test_every_method_is_documented_and_has_a_command():
    contract = (ROOT / "docs" / "METHODS.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in heatmap.methods():
        assert f"## {name}" in contract or f"**{name}**" in contract, name
        assert f"`heatmap {name}`" in readme, name


def test_no_test_module_imports_another():
    for path in (ROOT / "tests").glob("*.py"):
        imports = imported_modules(path)
        assert not {name for name in imports if name.startswith("test_") or name == "conftest"}, path
