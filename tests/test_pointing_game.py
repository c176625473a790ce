"""With the shipped demo models, the maps land on the target object (``heatmap eval``'s pointing protocol)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import heatmap
from heatmap.demo.shapes_world import make_scenes
from heatmap.evaluation.pointing import pointing_game

HELD_OUT_SEED = 777  # the demo classifier was trained on other seeds
DEMO_DIR = Path(__file__).parents[1] / "demo"
pytestmark = pytest.mark.slow  # minutes of CPU: 100 scenes per method and model


@pytest.fixture(scope="module")
def demo():
    return heatmap.load("demo", device="cpu")


@pytest.fixture(scope="module")
def held_out_scenes():
    return make_scenes(100, seed=HELD_OUT_SEED, num_objects=(2, 3))


@pytest.fixture(scope="module")
def two_object_scenes():
    return make_scenes(100, seed=HELD_OUT_SEED, num_objects=(2, 2))


@pytest.fixture(scope="module")
def demo_clip():
    from heatmap.models import load_clip
    return load_clip("demo", device="cpu")


@pytest.fixture(scope="module")
def chefer_generic_result(demo, held_out_scenes):
    return pointing_game(demo, held_out_scenes, "chefer-generic")


def test_pointing_game_reproduces_the_shipped_figure(chefer_generic_result):
    recorded = json.loads((DEMO_DIR / "classifier.json").read_text())["metrics"]
    assert chefer_generic_result.pairs == recorded["pointing_game_pairs"] >= 200
    assert chefer_generic_result.rate == pytest.approx(recorded["pointing_game_chefer_generic"], abs=0.5 / 242)


def test_chefer_generic_points_at_the_target_object(chefer_generic_result):
    assert chefer_generic_result.rate >= 0.90, f"{chefer_generic_result.hits}/{chefer_generic_result.pairs}"


def test_demo_clip_points_at_the_object_of_each_caption(demo_clip, held_out_scenes):
    result = pointing_game(demo_clip, held_out_scenes, "chefer-generic")
    recorded = json.loads((DEMO_DIR / "clip.json").read_text())["metrics"]
    assert result.pairs == recorded["pointing_game_pairs"] >= 200
    assert result.rate == pytest.approx(recorded["pointing_game_chefer_generic"], abs=0.5 / result.pairs)
    assert result.rate >= 0.85, f"{result.hits}/{result.pairs}"


@pytest.mark.parametrize("model", ["classifier", "CLIP"])
def test_transformer_attribution_points_at_least_as_well_as_chefer_generic(model, demo, demo_clip,
                                                                           two_object_scenes):
    # The bar of transformer-attribution: 100 held-out two-object scenes
    # (README: 99.5% for both methods on the classifier; on the CLIP 99.5%
    # against chefer-generic's 89.0% at its last-block default).
    adapter, game = (demo, pointing_game) if model == "classifier" else (demo_clip, pointing_game)
    attribution = game(adapter, two_object_scenes, "transformer-attribution")
    generic = game(adapter, two_object_scenes, "chefer-generic")
    assert attribution.pairs == generic.pairs == 200
    assert attribution.hits >= generic.hits, f"{attribution.hits} < {generic.hits} of 200"
    assert attribution.rate >= 0.95
