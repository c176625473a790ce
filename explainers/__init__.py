"""The methods, registered by the names the CLI uses.

``EXPLAINERS`` is the one list that the CLI, its help text and the tests
iterate; the math of each is in ../METHODS.md and in its own file here.
"""

from heatmap.explainers.base import Explainer, Explanation
from heatmap.explainers.chefer_generic import CheferGeneric
from heatmap.explainers.grad_rollout import GradRollout
from heatmap.explainers.rollout import Rollout

EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (Rollout, GradRollout, CheferGeneric)
}

__all__ = ["EXPLAINERS", "Explainer", "Explanation"]
