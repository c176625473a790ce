"""The attention probe of transformers models: same outputs, the model left exactly as it was, structure read.

The probe registers its eager attention in transformers' own registry and
switches the configs to it for the duration of a capture; these tests check
the outputs do not move, that every config gets its attention implementation
back (also after an error, also for implementations that cannot run here),
that batches and text order change nothing, and that the layer parts are found
by what they compute and refused by what they are not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import heatmap  # noqa: E402
from heatmap.models import adapter_for  # noqa: E402
from heatmap.models.hf import attention  # noqa: E402
from heatmap.models.hf.attention import model_configs  # noqa: E402
from helpers.hf_models import (  # noqa: E402
    clip_pair,
    clip_tokenizer,
    needs_float64_clip,
    part,
    siglip_tokenizer,
    tiny_siglip,
    vit_layers,
    vit_pair,
)
from helpers.models import TEXTS, random_images  # noqa: E402

# The probe's eager attention against transformers' SDPA or eager attention,
# float32: measured 2.4e-6 native, 1.5e-6 portable (ATEN_CPU_CAPABILITY=default)
# (logits, relative to the largest; the products run in another order). 3e-5
# keeps over 10x.
ROUND_OFF = 3e-5


# chefer-generic (no LRP) on a float64 batch against one image, and with the
# texts reversed. measured: 1.3e-15 native, 7.5e-16 portable; 1e-12 keeps over 100x.
BATCH_TOLERANCE = 1e-12
# transformer-attribution (LRP) on a float64 batch against one image. measured:
# 0 native, 1.3e-17 portable on this Xeon; an AMD EPYC (MKL) measured up to
# 3.1e-11 for batches in float64 LRP (full-lrp). 1e-9 keeps over 30x above that.
LRP_BATCH_TOLERANCE = 1e-9


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer") / "files")


def models(implementation):
    """A ViT, a CLIP (causal text mask) and a SigLIP, all set to ``implementation``."""
    vit, clip = vit_pair("vit")[1], clip_pair()[1]
    siglip = tiny_siglip()
    for model in (vit, clip, siglip):
        model.set_attn_implementation(implementation)
    return vit, clip, siglip


@pytest.mark.numerics
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_outputs_are_the_same_with_and_without_the_probe(implementation, tokenizer):
    vit, clip, siglip = models(implementation)
    images = random_images(2, seed=3)
    ids = tokenizer(TEXTS, padding="max_length", max_length=10, return_tensors="pt")["input_ids"]
    siglip_ids = siglip_tokenizer()(TEXTS, padding="max_length", max_length=8, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = [vit(pixel_values=images).logits, clip(pixel_values=images, input_ids=ids).logits_per_image,
                 siglip(pixel_values=images, input_ids=siglip_ids).logits_per_image]
        adapters = [adapter_for(vit), adapter_for(clip, processor=tokenizer),
                    adapter_for(siglip, processor=siglip_tokenizer())]
        probed = []
        for adapter, inputs in zip(adapters, [None, ids, siglip_ids], strict=True):
            with adapter.towers[0].attention_capture(None) as image_capture:
                if inputs is None:
                    probed.append(adapter.logits(images))
                else:
                    with adapter.towers[1].attention_capture(None) as text_capture:
                        probed.append(adapter.score(adapter.image_embeddings(images),
                                                    adapter.text_embeddings(inputs)))
                    assert len(text_capture.attention_probs) == 3
            assert len(image_capture.attention_probs) == adapter.towers[0].num_blocks
    for before, during in zip(plain, probed, strict=True):
        assert relative_error(during, before) < ROUND_OFF


def test_the_text_tower_sees_the_causal_mask(tokenizer):
    _, clip, _ = models("sdpa")
    adapter = adapter_for(clip, processor=tokenizer)
    ids = adapter.tokenize(TEXTS)
    with adapter.towers[1].attention_capture(None) as capture, torch.no_grad():
        adapter.text_embeddings(ids)
    for probs in capture.attention_probs:
        assert torch.equal(probs.triu(1), torch.zeros_like(probs))  # no token attends to a later one


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flash_attention_2"])
def test_every_config_gets_its_implementation_back_also_after_an_error(implementation, tokenizer):
    _, clip, _ = models("sdpa")
    # flash attention cannot run on this machine: set it as a loaded model would carry it, never run it
    # outside the probe
    for config in model_configs(clip):
        config._attn_implementation_internal = implementation
    before = {id(config): config._attn_implementation for config in model_configs(clip)}
    assert len(before) == 3  # the model's, the vision and the text config
    weights = {key: value.clone() for key, value in clip.state_dict().items()}
    adapter = adapter_for(clip, processor=tokenizer)
    images = random_images(1, seed=1)
    heatmap.explain(adapter, images, "chefer-generic", texts=TEXTS[:2])
    with pytest.raises(RuntimeError, match="inside"):
        with adapter.towers[0].attention_capture(0):
            raise RuntimeError("an error inside the capture")
    assert {id(config): config._attn_implementation for config in model_configs(clip)} == before
    assert not attention._ROUTES  # no module is routed to a finished capture
    assert all(torch.equal(weights[key], value) for key, value in clip.state_dict().items())
    assert all(parameter.requires_grad for parameter in clip.parameters())
    assert not clip.training
    assert all(not module._forward_hooks for module in clip.modules())
    assert "forward" not in vars(clip.vision_model.encoder.layers[0].self_attn)  # no forward replaced


@pytest.mark.numerics
@needs_float64_clip
def test_batch_and_text_order_change_nothing(tokenizer):
    clip = clip_pair()[1].double()
    images = random_images(3, seed=4, dtype=torch.float64)
    batch = heatmap.explain(clip, images, "chefer-generic", texts=TEXTS, processor=tokenizer)
    for b in range(3):
        one = heatmap.explain(clip, images[b:b + 1], "chefer-generic", texts=TEXTS, processor=tokenizer)
        assert relative_error(one.maps[0], batch.maps[b]) < BATCH_TOLERANCE
    reordered = heatmap.explain(clip, images, "chefer-generic", texts=TEXTS[::-1], processor=tokenizer)
    assert relative_error(reordered.maps.flip(1), batch.maps) < BATCH_TOLERANCE
    for b in range(3):
        for t in range(3):
            assert relative_error(reordered.text_relevance[b][2 - t], batch.text_relevance[b][t]) < BATCH_TOLERANCE
    vit = vit_pair("deit")[1].double()
    batch = heatmap.explain(vit, images, "transformer-attribution", target=[0, 1, 2]).maps
    singles = torch.cat([heatmap.explain(vit, images[b:b + 1], "transformer-attribution", target=[b]).maps
                         for b in range(3)])
    assert relative_error(singles, batch) < LRP_BATCH_TOLERANCE
    again = heatmap.explain(vit, images, "transformer-attribution", target=[0, 1, 2]).maps
    assert batch.numpy().tobytes() == again.numpy().tobytes()


@pytest.mark.numerics
def test_bfloat16_models_are_explained_in_float32_and_left_in_bfloat16():
    model = vit_pair("vit")[1]
    images = random_images(2, seed=6)
    as_float32 = heatmap.explain(model.to(torch.bfloat16).float(), images, "transformer-attribution", target=1)
    model = model.to(torch.bfloat16)
    result = heatmap.explain(model, images, "transformer-attribution", target=1)
    assert result.maps.dtype == torch.float32 and next(model.parameters()).dtype == torch.bfloat16
    assert torch.equal(result.maps, as_float32.maps)


# -- the structure, read from what the layers compute ----------------------------------

def test_the_parts_are_found_by_what_they_compute():
    model = vit_pair("vit")[1]
    parts = adapter_for(model).towers[0].parts()
    for layer, found in zip(vit_layers(model.vit), parts, strict=True):
        assert (found.q, found.k, found.v, found.out) == (part(layer, "q"), part(layer, "k"), part(layer, "v"),
                                                          part(layer, "o"))
        assert (found.fc1, found.fc2, found.num_heads) == (part(layer, "fc1"), part(layer, "fc2"), 4)
        assert found.attention_norm is layer.layernorm_before and found.mlp_norm is layer.layernorm_after


@pytest.mark.numerics
def test_swapped_projections_are_read_as_they_are_used():
    # q and k exchanged in the module but not in the forward pass: the roles follow the computation
    model = vit_pair("vit")[1]
    layer = vit_layers(model.vit)[0]
    reference = heatmap.explain(model, random_images(1, seed=2), "transformer-attribution", target=1).maps
    q, k = part(layer, "q"), part(layer, "k")
    (holder, q_name), (_, k_name) = (holder_of(layer, q), holder_of(layer, k))
    setattr(holder, q_name, k)
    setattr(holder, k_name, q)
    with torch.no_grad():  # keep the computation: the module now called q_proj holds k's weights and is used as k
        q.weight, k.weight = k.weight, q.weight
        q.bias, k.bias = k.bias, q.bias
    moved = heatmap.explain(model, random_images(1, seed=2), "transformer-attribution", target=1).maps
    # float32; measured: 0 difference native and portable (ATEN_CPU_CAPABILITY=default)
    assert relative_error(moved, reference) < 1e-6


def holder_of(layer, module):
    """The module holding ``module`` as an attribute, and the attribute's name."""
    for holder in layer.modules():
        for name, child in holder.named_children():
            if child is module:
                return holder, name
    raise LookupError(module)


def test_a_layer_that_is_not_a_pre_norm_block_is_refused_for_lrp_only():
    model = vit_pair("vit")[1]
    vit_layers(model.vit)[1].layernorm_after = nn.Identity()  # the MLP reads the sum without a norm
    images = random_images(1, seed=2)
    with pytest.raises(heatmap.UnsupportedModelError, match="layer 1: 1 LayerNorms"):
        heatmap.explain(model, images, "transformer-attribution", target=1)
    assert heatmap.explain(model, images, "chefer-generic", target=1).maps.shape == (1, 4, 4)


def test_an_activation_the_rules_do_not_know_is_refused_for_lrp():
    twin, model = vit_pair("vit")
    model.config.hidden_act = "relu"
    with pytest.raises(heatmap.UnsupportedModelError, match="activation 'relu'"):
        heatmap.explain(model, random_images(1, seed=2), "partial-lrp", target=1)


def test_a_forward_set_on_the_pooling_head_before_is_put_back():
    # libraries such as accelerate set a forward on the instance; the probe must give that one back
    model = tiny_siglip()
    pool = model.vision_model.head.attention
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        return type(pool).forward(pool, *args, **kwargs)

    pool.forward = wrapped
    heatmap.explain(model, random_images(1, seed=2), "rollout", texts=["cat"], processor=siglip_tokenizer())
    assert vars(pool)["forward"] is wrapped and not calls  # not called during the probe, restored after
    with torch.no_grad():
        model.vision_model(pixel_values=random_images(1, seed=2))
    assert calls == [1]
