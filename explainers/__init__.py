"""The math: one file per method, the registry, the driver, and the pure functions they share.

- ``registry.py``: the one source of truth per method (:func:`methods`);
- ``driver.py``: the one explanation run, for every model kind;
- ``aggregation.py``, ``lrp.py``: pure functions of docs/METHODS.md;
- every other module: one method, registered when imported.

Importing this package (and listing the methods) loads no torch.
"""

from heatmap.explainers.registry import Evidence, Method, Option, method, methods

__all__ = ["Evidence", "Method", "Option", "method", "methods"]
