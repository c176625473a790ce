"""What the tests share: tiny random models (``models``) and independent references of docs/METHODS.md
(``reference``, ``clip_reference``, ``lrp_reference``), written without vit-heatmap's code.

Importable as ``helpers`` because pytest puts ``tests/`` on the path (``pythonpath`` in pyproject.toml),
which also works under ``--import-mode=importlib``.
"""
