"""``python -m heatmap.cli``: the same as the ``heatmap`` command."""

from heatmap.cli.app import main

main()
