"""``--help`` speaks of values, not of Python types: no ``<str>``, ``<int>``, ``<list[str]>`` in any option."""

from __future__ import annotations

import re

import pytest
import typer.main

from heatmap.cli.app import app
from helpers.console import console_script

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
PYTHON_TYPES = re.compile(r"<(?:str|int|float|path|list\[[^\]]*\])(?: range)?>")


@pytest.mark.parametrize("command", COMMANDS)
def test_no_option_shows_a_python_type(command):
    result = console_script(command, "--help", env={"COLUMNS": "120"})
    assert result.returncode == 0
    assert not PYTHON_TYPES.findall(result.stdout), PYTHON_TYPES.findall(result.stdout)
    assert "{" not in result.stdout.splitlines()[0]  # the usage line names arguments, not Python parameters


@pytest.mark.parametrize("command", ["rollout", "clip", "gallery", "eval"])
def test_options_come_in_groups_and_examples_follow(command):
    help_text = console_script(command, "--help", env={"COLUMNS": "120"}).stdout
    groups = re.findall(r"^([A-Z][\w ]+):$", help_text, flags=re.MULTILINE)
    assert {"Model", "Outputs and pictures", "Messages", "Examples"} <= set(groups), groups
    assert groups.index("Model") < groups.index("Messages") < groups.index("Examples")
    examples = help_text.split("Examples:", 1)[1].strip().splitlines()
    assert examples and all(line.strip().startswith(f"heatmap {command} ") for line in examples)


def test_eval_lists_the_methods_and_protocols_it_takes():
    # help wraps at hyphens ("transformer-\n attribution"): join the words again
    help_text = re.sub(r"-\s+", "-", " ".join(console_script("eval", "--help", env={"COLUMNS": "120"}).stdout.split()))
    assert "transformer-attribution" in help_text and "energy-pointing" in help_text
