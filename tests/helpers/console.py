"""The console script's entry point run in the test process, as a shell would see it."""

from __future__ import annotations

import subprocess
import sys
import types
from unittest.mock import patch

from typer.testing import CliRunner

from heatmap.cli.app import main


def console_script(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``heatmap ARGS...`` through ``heatmap.cli.app:main`` in this process: its exit code, stdout and stderr.

    The same code as the console script, usage errors and exit codes included, without the cost of
    a new Python process (importing torch). ``env`` sets variables for the duration of the call.
    """
    argv = ["heatmap", *map(str, args)]
    main_module = sys.modules["__main__"]
    # a console script's __main__ is a plain script: click then names the program after argv[0]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        with CliRunner().isolation(env=env) as (stdout, stderr, _), patch.object(sys, "argv", argv):
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            return subprocess.CompletedProcess(argv, code, stdout.getvalue().decode(), stderr.getvalue().decode())
    finally:
        sys.modules["__main__"] = main_module
