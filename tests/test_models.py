"""Loading models: local checkpoints (safely), the Hugging Face cache offline, clear errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from heatmap.errors import HeatmapError, UsageError
from heatmap.models import load, resolve_device

TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return timm.create_model(TINY, pretrained=False, num_classes=7).state_dict()


def test_safetensors_checkpoint_loads_into_the_architecture(tmp_path, tiny_state):
    path = tmp_path / "weights.safetensors"
    save_file(tiny_state, path)
    adapter = load(TINY, checkpoint=path, device="cpu")
    assert adapter.model.num_classes == 7  # read from the checkpoint's head
    assert torch.equal(adapter.model.state_dict()["blocks.0.attn.qkv.weight"], tiny_state["blocks.0.attn.qkv.weight"])


def test_pt_checkpoint_nested_and_dataparallel_prefixed(tmp_path, tiny_state):
    path = tmp_path / "weights.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    adapter = load(TINY, checkpoint=path, device="cpu")
    assert torch.equal(adapter.model.state_dict()["head.weight"], tiny_state["head.weight"])


class Payload:
    """Unpickling this would run code: __reduce__ calls a function."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_needs_code_is_refused_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"weights": Payload()}, path)
    refused = r"needs code to unpickle \(.*system\), which vit-heatmap never runs"
    with pytest.raises(HeatmapError, match=refused) as info:
        load(TINY, checkpoint=path, device="cpu")
    assert not (tmp_path / "pwned").exists()
    assert "weights_only" not in str(info.value)  # never relay advice to turn the safety off


def test_random_bytes_are_not_a_checkpoint_and_nothing_leaks(tmp_path, recwarn):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(HeatmapError, match="is not a PyTorch checkpoint") as info:
        load(TINY, checkpoint=path, device="cpu")
    assert "weights_only" not in str(info.value) and "unpickle" not in str(info.value)
    assert not [warning for warning in recwarn if "torch" in str(warning.filename)]


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    other = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2).state_dict()
    path = tmp_path / "small.safetensors"
    save_file(other, path)
    with pytest.raises(HeatmapError) as info:
        load(TINY, checkpoint=path, device="cpu")
    message = str(info.value)
    assert "does not fit vit_tiny_patch16_224" in message
    assert "missing keys: blocks.10." in message or "missing keys: blocks.2." in message
    assert "shape mismatches: blocks.0.attn.proj.bias (384,) vs (192,)" in message


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not really")
    with pytest.raises(HeatmapError, match="not a readable .safetensors file"):
        load(TINY, checkpoint=path, device="cpu")


def test_unknown_model_suggests_close_names():
    with pytest.raises(UsageError, match="unknown model 'vit_tiny_patch17_224'; did you mean vit_tiny_patch16_224"):
        load("vit_tiny_patch17_224", device="cpu")


def test_non_vit_model_is_refused(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file(state, tmp_path / "r.safetensors")
    with pytest.raises(HeatmapError, match="ResNet is not a timm ViT"):
        load("resnet18", checkpoint=tmp_path / "r.safetensors", device="cpu")


@pytest.mark.parametrize("architecture,reason", [
    ("swin_tiny_patch4_window7_224", "window attention (Swin) is not covered by any rule"),
    ("beit_base_patch16_224", "relative-position bias (BEiT) is not covered by any rule"),
    ("vit_small_patch16_18x2_224", "block 0 is a ParallelThingsBlock: attention in parallel branches of one block"),
    ("vit_base_patch16_xp_224", "block 0 is a ParallelScalingBlock: attention in parallel branches of one block"),
])
def test_architectures_no_rule_covers_are_refused_naming_the_part(architecture, reason):
    from heatmap.models import adapter_for
    with torch.device("meta"):  # the refusal reads the structure only: no memory, no weights
        model = timm.create_model(architecture, pretrained=False)
    with pytest.raises(HeatmapError, match=re.escape(f"{architecture}: {reason}")):
        adapter_for(model, name=architecture)


def test_a_naflex_patch_dictionary_is_refused():
    from heatmap.models import adapter_for
    tower = adapter_for(timm.create_model("naflexvit_base_patch16_gap", pretrained=False, depth=1,
                                          embed_dim=32, num_heads=2)).tower
    patches = {"patches": torch.zeros(1, 4, 768), "patch_coord": torch.zeros(1, 4, 2, dtype=torch.long),
               "patch_valid": torch.tensor([[True, True, True, False]])}
    with tower.attention_capture(None), pytest.raises(HeatmapError, match="variable patch counts"):
        tower.model(patches)


def test_cuda_without_cuda_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def fill_hub_cache(cache: Path, repo_id: str, state: dict) -> None:
    """The Hugging Face cache layout, as `hf download` leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")


def run_offline(args, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "heatmap.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pretrained_name_resolves_from_the_filled_cache_offline(tmp_path):
    torch.manual_seed(1)
    state = timm.create_model(TINY, pretrained=False).state_dict()
    repo_id = timm.models.get_pretrained_cfg(TINY).hf_hub_id
    fill_hub_cache(tmp_path / "hub", repo_id, state)
    image = Path(__file__).parents[1] / "sample_images" / "coffee.png"
    result = run_offline(["rollout", str(image), "-m", TINY, "-o", "out", "-t", "espresso"], tmp_path / "hub", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("coffee.rollout.espresso.*.npy"))) == 1


def test_default_model_missing_from_cache_says_how_to_get_it(tmp_path):
    image = Path(__file__).parents[1] / "sample_images" / "coffee.png"
    result = run_offline(["chefer-generic", str(image)], tmp_path / "empty-hub", tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "vit_base_patch16_224 are not in the local cache" in lines[0]
    assert "--model demo" in lines[0]


def test_a_model_without_a_classifier_head_is_refused_before_any_download(tmp_path, monkeypatch):
    # DINOv3's published weights are features only: refused from the skeleton, never downloaded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HeatmapError, match=r"has no classifier head \(num_classes=0\)"):
        load("vit_small_patch16_dinov3", device="cpu")
    from heatmap.models import adapter_for
    with pytest.raises(HeatmapError, match="its outputs are features, not class scores"):
        adapter_for(timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=1))


def test_a_naflexvit_class_token_is_its_query_row():
    # RADIO's NaFlexVit keeps its class token in its embeddings (embeds.cls_token), then 7 registers
    from heatmap.models import adapter_for
    model = timm.create_model("naflexvit_base_patch16_radio_v3", pretrained=False, depth=1, embed_dim=32, num_heads=2,
                              num_classes=3, img_size=64)
    tower = adapter_for(model).tower
    assert (tower.class_token, tower.num_prefix_tokens) == (0, 8)
    assert tower.query(1, 8 + 16)[0].tolist() == [1.0] + [0.0] * 23
