"""legrad equals a plain, float64 reading of docs/METHODS.md ("legrad").

For each block l from the start layer on, the score ``y_l`` read from that
block's output tokens (a classifier: the target logit of
``head(fc_norm(pool(norm(x_l))))`` with the model's own pooling; a CLIP image
tower: the cosine of ``ln_post(mean of ALL tokens of x_l) @ proj`` with the
unit text embedding), ``G_l = (d y_l / d A_l)+``, mean over heads, mean over
ALL query rows, patch columns reshaped to the grid; the map is the sum over
the blocks. The reference (``helpers.legrad_reference``) forms every block's
attention by hand so that each ``A_l`` is a tensor in the graph, and
differentiates each ``y_l`` on its own with ``torch.autograd.grad``; it uses
nothing of vit-heatmap but ``heatmap.explain``.
"""

from __future__ import annotations

import pytest
import torch

import heatmap
from heatmap.errors import UsageError
from helpers.legrad_reference import clip_reference_maps, relative_error, vit_reference
from helpers.models import TEXTS, random_images, tiny_clip, tiny_vit, tokens_of

# Largest relative error (max|a - b| / max|b|) of one image's float64 maps
# (CLIP: one image and its texts) against the one-image float64 reference,
# over every case here. measured: 8.3e-16 native (the CLIPs; the ViTs
# bit-equal), 8.3e-16 portable (ATEN_CPU_CAPABILITY=default); 1e-12 keeps a
# margin of over 1000x. A changed rule (no clamp, clamp after the head mean,
# the class-token row only, the CLIP read-out without the class token) is off
# by 6e-2 to 16.
FLOAT64_TOLERANCE = 1e-12
# A batch against its images one at a time (no LRP here). measured: 2.1e-16
# native, 4.2e-16 portable; 1e-12 keeps over 1000x.
BATCH_TOLERANCE = 1e-12


def images_for(model, count, seed):
    """``count`` standard-normal float64 images of the model's input size."""
    height, width = model.patch_embed.img_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, height, width, generator=generator, dtype=torch.float64)


# -- the tests ---------------------------------------------------------------------

VIT_CASES = {
    "class-token": lambda: tiny_vit(),
    "4-prefix-tokens": lambda: tiny_vit(reg_tokens=3),
    "mean-pooled": lambda: tiny_vit(global_pool="avg"),
    "non-square-3x5": lambda: tiny_vit(img_size=(24, 40)),
}


@pytest.mark.numerics
@pytest.mark.parametrize("start", [None, -1, 0], ids=["default-start", "start-minus-1", "start-0"])
@pytest.mark.parametrize("case", VIT_CASES)
def test_classifier_maps_match_the_reference(case, start):
    model = VIT_CASES[case]().double()
    images = images_for(model, 3, seed=123)
    targets = [1, 4, 2]
    options = {} if start is None else {"start_layer": start}
    for b in range(3):  # each image alone: the batch's own test is below
        result = heatmap.explain(model, images[b:b + 1], "legrad", target=[targets[b]], **options)
        expected = vit_reference(model, images[b:b + 1], torch.tensor(targets[b:b + 1]), -2 if start is None else start)
        assert result.maps.shape == (1, *model.patch_embed.grid_size)
        assert result.maps.dtype == torch.float64
        assert relative_error(result.maps, expected) < FLOAT64_TOLERANCE


def test_default_start_is_the_last_two_blocks():
    # -2 on a 3-block model is block 1: differs from both all blocks and the last block only
    model = tiny_vit().double()
    images = images_for(model, 2, seed=7)
    default = heatmap.explain(model, images, "legrad", target=[0, 3]).maps
    assert torch.equal(default, heatmap.explain(model, images, "legrad", target=[0, 3], start_layer=1).maps)
    for other in (0, -1):
        assert relative_error(heatmap.explain(model, images, "legrad", target=[0, 3], start_layer=other).maps,
                              default) > 1e-3


@pytest.mark.numerics
@pytest.mark.parametrize("start", [None, 0], ids=["default-start", "start-0"])
@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_clip_maps_match_the_reference(pool_type, start):
    model = tiny_clip(pool_type=pool_type).double()
    images = random_images(2, seed=5, dtype=torch.float64)
    options = {} if start is None else {"start_layer": start}
    for b in range(2):  # each image alone, with the three texts
        result = heatmap.explain(model, images[b:b + 1], "legrad", texts=TEXTS, **options)
        expected = clip_reference_maps(model, images[b:b + 1], tokens_of(TEXTS), -2 if start is None else start)
        assert result.maps.shape == (1, 3, 4, 4)
        assert relative_error(result.maps, expected) < FLOAT64_TOLERANCE
        # LeGrad explains the image tower only
        assert result.text_relevance is None


@pytest.mark.numerics
def test_batch_equals_one_by_one_and_runs_repeat():
    model = tiny_vit(img_size=(24, 40)).double()
    images = images_for(model, 3, seed=11)
    targets = [0, 2, 4]
    batch = heatmap.explain(model, images, "legrad", target=targets)
    singles = torch.cat([heatmap.explain(model, images[i:i + 1], "legrad", target=[targets[i]]).maps
                         for i in range(3)])
    assert relative_error(batch.maps, singles) < BATCH_TOLERANCE
    again = heatmap.explain(model, images, "legrad", target=targets)
    assert batch.maps.numpy().tobytes() == again.maps.numpy().tobytes()


@pytest.mark.numerics
def test_clip_batch_equals_one_by_one():
    model = tiny_clip().double()
    images = random_images(2, seed=5, dtype=torch.float64)
    both = heatmap.explain(model, images, "legrad", texts=TEXTS).maps
    for b in range(2):
        alone = heatmap.explain(model, images[b:b + 1], "legrad", texts=TEXTS).maps
        assert relative_error(alone[0], both[b]) < BATCH_TOLERANCE


def test_the_map_depends_on_the_target():
    model = tiny_vit().double()
    images = images_for(model, 1, seed=3)
    first = heatmap.explain(model, images, "legrad", target=0).maps
    other = heatmap.explain(model, images, "legrad", target=3).maps
    assert relative_error(first, other) > 1e-2
    # and for CLIP on the text: each text gives its own map
    clip_maps = heatmap.explain(tiny_clip().double(), random_images(1, seed=5, dtype=torch.float64), "legrad",
                                texts=TEXTS).maps
    assert relative_error(clip_maps[0, 0], clip_maps[0, 1]) > 1e-2


@pytest.mark.parametrize("start", [7, -4, 3])
def test_a_start_layer_outside_the_model_is_refused(start):
    model = tiny_vit()  # 3 blocks: valid start layers are -3..2
    with pytest.raises(UsageError):
        heatmap.explain(model, random_images(1, seed=1), "legrad", target=0, start_layer=start)
