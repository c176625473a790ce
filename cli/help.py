"""``--help`` that reads well as plain text: options in named groups, and an example per command.

The help is plain (no rich boxes: quick, and it pastes cleanly into a
terminal or an issue). Typer groups options by ``rich_help_panel`` only in its
rich mode, so :class:`GroupedCommand` does the grouping for plain help: each
option's group is its ``rich_help_panel``, groups in the order they first
appear, the arguments first.
"""

from typing import Any

import typer.core

# Group names, in the order the explaining commands show them.
MODEL = "Model"
TARGETS = "What to explain"
EVALUATED = "What to evaluate"
METHOD = "Method options"
OUTPUTS = "Outputs and pictures"
BATCH = "Batches and resuming"
MESSAGES = "Messages"
GROUP_ORDER = (MODEL, TARGETS, EVALUATED, METHOD, OUTPUTS, BATCH, MESSAGES)


class GroupedCommand(typer.core.TyperCommand):
    """A Typer command whose plain ``--help`` lists its options group by group."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        # ctx and formatter are the click classes Typer carries with it (typer._click), not an installed click
        arguments: list[tuple[str, str]] = []
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((argument_name(param), record[1]))
            else:
                groups.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        ordered = sorted(groups, key=lambda name: GROUP_ORDER.index(name) if name in GROUP_ORDER else len(GROUP_ORDER))
        for name in ordered:
            records = groups[name]
            with formatter.section(name):
                formatter.write_dl(records)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``[OPTIONS] IMAGES...``: arguments by their names (plain Typer writes ``{inputs}...``)."""
        return ["[OPTIONS]"] + [argument_name(param) for param in self.get_params(ctx)
                                if param.param_type_name == "argument"]

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        """The examples, line by line as written (click would re-wrap them into one paragraph)."""
        if not self.epilog:
            return
        formatter.write_paragraph()
        for line in self.epilog.splitlines():
            formatter.write(f"{' ' * formatter.current_indent}{line}\n")


def argument_name(param: Any) -> str:
    """An argument as help shows it: its metavar (or name) in capitals, ``...`` when it takes several."""
    name = (param.metavar or param.name or "").upper().removesuffix("...")
    several = param.nargs == -1
    return f"{name}..." if several else name if param.required else f"[{name}]"


def examples(*lines: str) -> str:
    """An epilog of example command lines under the heading "Examples:"."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)
