"""``heatmap eval`` reserves its output folder before the model loads: one folder, one run's results.

Two runs started into one folder would otherwise both pass the check for an
earlier evaluation (neither has written yet) and mix their ``eval.jsonl``
lines while ``eval.json`` and ``eval.png`` describe only one of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import heatmap.cli.evaluate as cli_evaluate
from heatmap.cli.app import app
from heatmap.errors import HeatmapError, UsageError

runner = CliRunner()
DEMO_EVAL = ["eval", "--model", "demo", "--demo-world", "1", "--method", "rollout", "--protocol", "perturbation"]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def evaluated_inputs(out: Path) -> set[str]:
    return {json.loads(line)["input"] for line in (out / "eval.jsonl").read_text().splitlines()}


def test_a_second_eval_started_while_the_first_loads_its_model_is_refused(tmp_path, monkeypatch):
    """The second run (seed 5) starts while the first (seed 3) loads its model: it is refused with a usage
    error naming another --out, and the folder holds the first run's results alone."""
    out = tmp_path / "out"
    load = cli_evaluate._load
    second: list[object] = []
    started = []

    def load_while_another_starts(request, clip):
        if not started:
            started.append(True)
            other = cli_evaluate.EvalRequest(inputs=[], model="demo", demo_world=1, seed=5, methods=["rollout"],
                                             protocols=["perturbation"], out=out, output="quiet")
            try:
                second.append(cli_evaluate.run_eval(other))
            except UsageError as error:
                second.append(error)
        return load(request, clip)

    monkeypatch.setattr(cli_evaluate, "_load", load_while_another_starts)
    result = invoke(*DEMO_EVAL, "--seed", 3, "-o", out)
    assert result.exit_code == 0, result.output
    assert len(second) == 1 and isinstance(second[0], UsageError), second
    assert "another --out" in str(second[0]) and "eval.jsonl" in str(second[0])
    assert evaluated_inputs(out) == {"demo-world seed 3 scene 0"}
    assert json.loads((out / "eval.json").read_text())["settings"]["inputs"] == {"demo_world": 1, "seed": 3}


def test_a_run_into_a_folder_another_run_holds_exits_2_and_changes_nothing(tmp_path):
    """The reservation of a run still loading its model (an empty eval.jsonl, created new): a second run
    exits 2 in one line, and the reservation stays as it was."""
    out = tmp_path / "out"
    out.mkdir()
    reservation = cli_evaluate.Reservation(out)
    try:
        before = (out / "eval.jsonl").stat()
        result = invoke(*DEMO_EVAL, "-o", out)
        assert result.exit_code == 2, result.output
        assert "already holds an evaluation" in result.stderr and "another --out" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        after = (out / "eval.jsonl").stat()
        assert (after.st_ino, after.st_size) == (before.st_ino, 0)
        assert sorted(path.name for path in out.iterdir()) == ["eval.jsonl"]
    finally:
        reservation.close()


def test_a_run_that_fails_before_its_first_line_frees_the_folder(tmp_path, monkeypatch):
    """A model that fails to load leaves no eval.jsonl behind: the same --out can be used again."""
    out = tmp_path / "out"

    def no_model(request, clip):
        raise HeatmapError("no such model")

    with monkeypatch.context() as patched:
        patched.setattr(cli_evaluate, "_load", no_model)
        result = invoke(*DEMO_EVAL, "-o", out)
    assert result.exit_code == 1 and "no such model" in result.stderr
    assert not (out / "eval.jsonl").exists()
    result = invoke(*DEMO_EVAL, "--seed", 4, "-o", out)
    assert result.exit_code == 0, result.output
    assert evaluated_inputs(out) == {"demo-world seed 4 scene 0"}
