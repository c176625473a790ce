"""Fused attention kept: each block's probabilities recomputed from its q and k, ``dA = dO V^T``.

The driver's default (``attention="auto"``) keeps the model's fused kernel for
every method without LRP rules; ``attention="eager"`` is the reference. Both
must give the same maps, and a CLIP the same token relevance, to round-off,
on tiny timm, open_clip and transformers models.
"""

from __future__ import annotations

import pytest
import torch

from heatmap.explainers.driver import Driver
from heatmap.models import resolve_adapter
from heatmap.models.capture import FusedRecorder
from helpers.models import TEXTS, random_images, tiny_vit

transformers = pytest.importorskip("transformers")
from helpers.hf_models import clip_pair, clip_tokenizer, vit_pair  # noqa: E402

FUSED_METHODS = ["rollout", "raw-attention", "grad-rollout", "chefer-generic", "attention-gradcam", "legrad"]

# Largest |fused - eager| over a map or a text's token relevance, relative to the eager one's largest |value|,
# over every model and method here.
# float64: measured 1.1e-13 native, 4.3e-14 portable (ATEN_CPU_CAPABILITY=default); 1e-12 keeps about 10x.
# float32 image maps: measured 8.4e-7 native, 8.4e-7 portable (float32 round-off); 1e-5 keeps over 10x.
# float32 token relevance of a CLIP's text tower: measured 8.2e-5 native, 3.4e-5 portable (attention-gradcam,
# whose head mean of signed weights cancels: the same item agrees to 1e-13 in float64); 1e-3 keeps over 10x.
TOLERANCE = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-3)}


def largest_relative_difference(fused: torch.Tensor, eager: torch.Tensor) -> float:
    return float((fused - eager).abs().max() / eager.abs().max().clamp(min=torch.finfo(eager.dtype).tiny))


def models(dtype: torch.dtype, tmp_path):
    """name -> (adapter, explain(driver) -> the maps and, for a CLIP, every token relevance)."""
    images = random_images(2, seed=3, dtype=dtype)
    open_clip_model, hf_clip = clip_pair(dtype=dtype)
    tokenizer = clip_tokenizer(tmp_path)

    def classify(driver: Driver) -> list[torch.Tensor]:
        return [driver.explain(images, top_k=2).maps]

    def texts(driver: Driver) -> list[torch.Tensor]:
        result = driver.explain_texts(images, TEXTS[:2])
        relevance = [] if result.text_relevance is None else [t for row in result.text_relevance for t in row]
        return [result.maps, *relevance]

    return {
        "timm ViT": (resolve_adapter(tiny_vit().to(dtype), clip=False), classify),
        "timm ViT, 4 registers, mean pooling": (resolve_adapter(
            tiny_vit(class_token=False, reg_tokens=4, global_pool="avg").to(dtype), clip=False), classify),
        "open_clip CLIP": (resolve_adapter(open_clip_model, clip=True), texts),
        "transformers ViT": (resolve_adapter(vit_pair(dtype=dtype)[1], clip=False), classify),
        "transformers CLIP": (resolve_adapter(hf_clip, clip=True, processor=tokenizer), texts),
    }


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_fused_attention_gives_the_eager_maps(dtype, tmp_path, monkeypatch):
    calls = []
    attend = FusedRecorder.attend
    monkeypatch.setattr(FusedRecorder, "attend", lambda self, *args: calls.append(1) or attend(self, *args))
    worst = 0.0
    for name, (adapter, explain) in models(dtype, tmp_path).items():
        for method in FUSED_METHODS:
            if method == "legrad" and explain.__name__ == "texts":
                continue  # LeGrad explains the image tower alone; one tower is enough here
            calls.clear()
            fused = explain(Driver(adapter, method))
            assert calls, f"{name}, {method}: the fused kernel was not used"
            calls.clear()
            eager = explain(Driver(adapter, method, attention="eager"))
            assert not calls, f"{name}, {method}: attention='eager' used the fused kernel"
            for item, (mine, reference) in enumerate(zip(fused, eager, strict=True)):
                difference = largest_relative_difference(mine, reference)
                worst = max(worst, difference)
                assert difference <= TOLERANCE[dtype][min(item, 1)], (name, method, item, difference)
    print(f"largest relative difference, {dtype}: {worst:.2e}")


def test_lrp_methods_and_attention_pool_heads_stay_eager(monkeypatch):
    calls = []
    attend = FusedRecorder.attend
    monkeypatch.setattr(FusedRecorder, "attend", lambda self, *args: calls.append(1) or attend(self, *args))
    images = random_images(1, seed=3)
    adapter = resolve_adapter(tiny_vit(), clip=False)
    Driver(adapter, "transformer-attribution").explain(images)
    assert not calls
    pooled = resolve_adapter(tiny_vit(class_token=False, global_pool="map"), clip=False)
    Driver(pooled, "chefer-generic").explain(images)
    assert not calls
    Driver(adapter, "chefer-generic").explain(images)
    assert calls


def test_an_unknown_attention_is_refused():
    from heatmap.errors import UsageError

    with pytest.raises(UsageError, match="unknown attention 'flash'"):
        Driver(resolve_adapter(tiny_vit(), clip=False), "rollout", attention="flash")
