"""What the tests share: tiny random models (``models``) and independent references of docs/METHODS.md
(``reference``, ``clip_reference``, ``lrp_reference``, and per method ``rollout_reference``,
``baseline_reference``, ``transformer_attribution_reference``, ``partial_lrp_reference``,
``full_lrp_reference``, ``legrad_reference``), written without vit-heatmap's code.

Importable as ``helpers`` because pytest puts ``tests/`` on the path (``pythonpath`` in pyproject.toml),
which also works under ``--import-mode=importlib``.
"""
