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
    options = result.stdout.split("Options:", 1)[1]
    assert not PYTHON_TYPES.findall(options), PYTHON_TYPES.findall(options)


def test_eval_lists_the_methods_and_protocols_it_takes():
    help_text = " ".join(console_script("eval", "--help", env={"COLUMNS": "120"}).stdout.split())
    assert "transformer-attribution" in help_text and "energy-pointing" in help_text
