"""open_clip SigLIP (a timm trunk with an attention-pool head): by name and local file from the CLI, and its image
maps against a float64 reference.

The reference runs the timm trunk by hand (explicit attention in every block
and in the head, nothing of vit-heatmap) and lays the head out as
docs/METHODS.md ("Modern ViT parts") does: the probe is token 0 of ``N + 1``,
every block's ``[N, N]`` gets a zero row and column 0, the head's ``[1, N]``
is row 0 of the layer ``L`` whose other rows are 0. legrad reads each block's
output through the whole read-out (final norm, the head and its MLP).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

pytest.importorskip("transformers")  # the tokenizer is a transformers one (open_clip's HFTokenizer)

import heatmap  # noqa: E402
from heatmap.models import load_clip  # noqa: E402
from helpers import reference  # noqa: E402
from helpers.console import console_script  # noqa: E402
from helpers.legrad_reference import vit_blocks  # noqa: E402
from helpers.models import random_images  # noqa: E402
from helpers.open_clip_siglip import MODEL, random_siglip, register  # noqa: E402

TEXTS = ["a red circle", "two blue stars"]
WORKING = ["attention-gradcam", "chefer-generic", "grad-rollout", "legrad", "raw-attention", "rollout"]
# the library's CLIP default start layers (registry: clip_defaults); the head is the last layer
STARTS = {"rollout": 0, "grad-rollout": 0, "chefer-generic": -1, "raw-attention": -1, "attention-gradcam": -1,
          "legrad": -2}
# Largest relative error of one image's float64 map against the one-image float64 reference over every case
# here. measured: 3.8e-15 native, 2.7e-15 portable (ATEN_CPU_CAPABILITY=default); 1e-12 keeps over 250x.
FLOAT64_TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The registered model's random weights in a local file."""
    folder = tmp_path_factory.mktemp("siglip")
    register(folder)
    save_file(random_siglip().state_dict(), folder / "weights.safetensors")
    return folder / "weights.safetensors"


def relative_error(actual, expected):
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def test_heatmap_clip_by_name_and_local_file_end_to_end(weights, tmp_path):
    picture = tmp_path / "scene.png"
    from PIL import Image
    Image.fromarray((random_images(1, seed=3)[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()).save(picture)
    out = tmp_path / "out"
    result = console_script("clip", picture, "--model", MODEL, "--pretrained", weights, "--text", TEXTS[0],
                            "--text", TEXTS[1], "--method", "chefer-generic", "-o", out)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [entry["text"] for entry in entries] == TEXTS
    api = heatmap.explain(load_clip(MODEL, pretrained=weights, device="cpu"), [picture], "chefer-generic",
                          texts=TEXTS)
    for t, entry in enumerate(entries):
        # SigLIP scores each pair on its own: the probability is the pair's sigmoid, not a softmax over the texts
        assert entry["probability"] == pytest.approx(float(api.logits[0, t].sigmoid()), abs=1e-6)
        assert entry["word_pieces"] == api.word_pieces[t]
        saved = np.load(out / entry["files"]["npy"])
        assert saved.shape == (4, 4)
        # the same float32 computation in the same process: equal to float32 round-off of the map's maximum
        assert np.abs(saved - api.maps[0, t].numpy()).max() <= 1e-6 * np.abs(saved).max()


@pytest.mark.parametrize("method", ["transformer-attribution", "partial-lrp", "full-lrp"])
def test_the_lrp_methods_are_refused_naming_the_head(method, weights):
    adapter = load_clip(MODEL, pretrained=weights, device="cpu")
    with pytest.raises(heatmap.UnsupportedModelError) as error:
        heatmap.explain(adapter, random_images(1, seed=1), method, texts=TEXTS)
    message = str(error.value)
    assert "attention-pool head" in message
    assert message.endswith("methods that do work for this model: " + ", ".join(WORKING))


# -- the float64 reference -------------------------------------------------------------


def read_out(model, tokens):
    """Final norm, the attention-pool head by hand, open_clip's (empty) head: the image embedding and the head's
    probabilities [B, H, 1, N]."""
    trunk = model.visual.trunk
    pool = trunk.attn_pool
    x = trunk.norm(tokens)
    B, N, C = x.shape
    H = pool.num_heads
    q = pool.q(pool.latent.expand(B, -1, -1)).reshape(B, 1, H, C // H).transpose(1, 2)
    kv = pool.kv(x).reshape(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4)
    P = torch.softmax((q * pool.scale) @ kv[0].transpose(-2, -1), dim=-1)
    pooled = pool.proj((P @ kv[1]).transpose(1, 2).reshape(B, 1, C))
    pooled = (pooled + pool.mlp(pool.norm(pooled)))[:, 0]
    return model.visual.head(trunk.head(trunk.fc_norm(pooled))), P


def padded(matrix, row_only=False):
    """[H, Q, N] -> [H, N+1, N+1]: a block's matrix after a zero probe row and column, or (``row_only``) the
    head's probabilities (mean over the probes) as the probe's row, every other row 0."""
    H, _, N = matrix.shape
    out = torch.zeros(H, N + 1, N + 1, dtype=matrix.dtype)
    if row_only:
        out[:, 0, 1:] = matrix.mean(dim=1)
    else:
        out[:, 1:, 1:] = matrix
    return out


def reference_map(model, image, t, method):
    """``method``'s image map of ``image`` (one) for text t, per docs/METHODS.md: [gh * gw]."""
    unit_text = F.normalize(model.encode_text(model.tokenizer_tokens), dim=-1)[t].detach()
    outputs, attentions = vit_blocks(model.visual.trunk, image)  # a plain ViT trunk: no q/k norms
    embedding, P = read_out(model, outputs[-1])
    L = len(attentions)
    start = STARTS[method] % (L + 1)
    if method == "legrad":  # each block's own read-out through the whole head; the blocks s..L-1 only
        total = 0
        for layer in range(start, L):
            y = (F.normalize(read_out(model, outputs[layer])[0], dim=-1)[0] * unit_text).sum()
            G, = torch.autograd.grad(y, attentions[layer], retain_graph=True)
            total = total + padded(G[0].clamp(min=0)).mean(dim=0).mean(dim=0)
        return total[1:]
    logit = model.logit_scale.exp() * (F.normalize(embedding, dim=-1)[0] * unit_text).sum() + model.logit_bias
    grads = torch.autograd.grad(logit, [*attentions, P])
    A = [padded(a[0].detach()) for a in attentions] + [padded(P[0].detach(), row_only=True)]
    G = [padded(g[0]) for g in grads[:-1]] + [padded(grads[-1][0], row_only=True)]
    if method == "raw-attention":
        return A[-1].mean(dim=0)[0, 1:]
    if method == "attention-gradcam":
        weights = G[-1][:, 0, 1:].mean(dim=-1)
        return (weights[:, None] * A[-1][:, 0, 1:]).mean(dim=0).clamp(min=0)
    if method == "rollout":
        R = reference.rollout_one(A, "mean", 0.0, start, protect=0)
    elif method == "grad-rollout":
        R = reference.grad_rollout_one(A, G, 0.9, start)
    else:
        R = reference.chefer_generic_one(A, G, start)
    return R[0, 1:]


@pytest.fixture(scope="module")
def float64_model(weights):
    adapter = load_clip(MODEL, pretrained=weights, device="cpu")
    model = adapter.model.double()
    model.tokenizer_tokens = adapter.tokenize(TEXTS)
    return adapter, model


@pytest.mark.numerics
@pytest.mark.parametrize("method", WORKING)
def test_image_maps_match_the_float64_reference(method, float64_model):
    adapter, model = float64_model
    images = random_images(2, seed=5, dtype=torch.float64)
    for b in range(2):  # each image alone
        result = heatmap.explain(adapter, images[b:b + 1], method, texts=TEXTS)
        assert result.maps.dtype == torch.float64
        for t in range(len(TEXTS)):
            expected = reference_map(model, images[b:b + 1], t, method)
            assert expected.abs().max() > 0 and expected.std() > 0  # the test can fail
            assert relative_error(result.maps[0, t].flatten(), expected) < FLOAT64_TOLERANCE


def test_a_tokenizer_out_of_reach_on_the_hub_says_how_to_get_it(monkeypatch, tmp_path):
    import open_clip

    def offline(name, *args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(heatmap.HeatmapError, match=r"ViT-B-16-SigLIP: its tokenizer timm/ViT-B-16-SigLIP is neither "
                       r"in the Hugging Face cache nor downloadable .*`hf download timm/ViT-B-16-SigLIP`"):
        load_clip("ViT-B-16-SigLIP", pretrained=tmp_path / "weights.safetensors", device="cpu")
