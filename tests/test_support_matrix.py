"""docs/SUPPORT.md says what the code does: a few cheap rows rerun with ``scripts/support_matrix.py``'s own function.

The matrix depends on timm's architectures, so the rows are only compared
under the timm, open_clip and torch versions SUPPORT.md was generated with.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "support_matrix.py"
SUPPORT = ROOT / "docs" / "SUPPORT.md"
# Tiny and cheap (about a second each), and between them a refusal (the distillation head) and full support.
ROWS = [("vision_transformer", "vit_tiny_patch16_224"), ("deit", "deit_tiny_distilled_patch16_224")]


def load_script():
    spec = importlib.util.spec_from_file_location("support_matrix", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def document(script):
    text = SUPPORT.read_text(encoding="utf-8")
    documented = script.documented_versions(text)
    if documented != script.versions():
        pytest.skip(f"docs/SUPPORT.md was generated with {documented}; installed: {script.versions()}")
    return text


@pytest.mark.parametrize(("module", "name"), ROWS)
def test_rows_match_the_committed_matrix(script, document, module, name):
    table = script.parse_table(document)
    refusals = script.parse_footnotes(document, "Refusals")
    crashes = script.parse_footnotes(document, "Crashes")
    assert name in table, f"{name} has no row in docs/SUPPORT.md"
    row = script.run_model(module, name)
    assert row["built"], row["build_error"]
    for method, cell in row["cells"].items():
        written = table[name][script.SHORT_NAMES.get(method, method)]
        if cell["status"] == "ok":
            assert written == "✔", (method, written)
        else:
            mark, number = written.split()
            footnotes = refusals if cell["status"] == "refused" else crashes
            assert mark == ("✘" if cell["status"] == "refused" else "💥"), (method, written, cell)
            assert footnotes[int(number)] == cell["reason"], (method, cell)
