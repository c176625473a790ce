"""The ``heatmap_snapshot`` fixture (heatmap.testing.pytest_plugin), run the way a user's suite runs it.

Each test writes a user's test file into a ``pytester`` folder and runs pytest
on it in-process. The first test checks that the plugin reaches such a run
through its ``pytest11`` entry point, as it reaches a user's; the others load
it alone (``-p heatmap.testing.pytest_plugin``, no other installed plugin), which keeps
them independent of what else is installed, and fast.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip  # noqa: F401
import pytest
import timm  # noqa: F401
import torch

# pytester forgets the modules a run imports once the run is over; torch and
# the model libraries cannot be imported twice in one process, so they are
# imported here, before any run, and stay.
import heatmap
import heatmap.compare.metrics
import heatmap.explainers.driver  # noqa: F401
import heatmap.models.open_clip.adapter  # noqa: F401
import heatmap.models.timm.adapter  # noqa: F401
import heatmap.outputs  # noqa: F401
import heatmap.pipeline  # noqa: F401
from heatmap.compare.metrics import Thresholds

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
README_SCENE = "sample_images/shapes_002_red-heart_pink-cross.png"

VIT_SUITE = '''
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

WEIGHTS = Path(__file__).with_name("vit.pt")


def build_vit():
    """The model under test: a tiny ViT, its weights saved on first use and read from the file."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peaked attention, so that the maps have a shape
        for block in model.blocks:
            block.attn.qkv.weight[:64] = torch.randn(64, 32, generator=generator) * 2 / 32 ** 0.5
    if not WEIGHTS.exists():
        torch.save(model.state_dict(), WEIGHTS)
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()


@pytest.fixture
def image():
    torch.manual_seed(1)
    return torch.randn(3, 32, 32)

'''

CLIP_SUITE = '''
from pathlib import Path

import open_clip
import torch

WEIGHTS = Path(__file__).with_name("clip.pt")


def build_clip():
    """A tiny CLIP (open_clip's own tokenizer, 10 tokens a text), its weights saved on first use."""
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=3, head_width=8),
        text_cfg=dict(context_length=10, vocab_size=49408, width=32, heads=4, layers=2))
    if not WEIGHTS.exists():
        torch.save(model.state_dict(), WEIGHTS)
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()

'''


def vit_suite(pytester: pytest.Pytester, body: str, module: str = "test_model") -> None:
    """Write the user's test module: the tiny ViT above, then ``body``."""
    pytester.makepyfile(**{module: VIT_SUITE + textwrap.dedent(body)})


def perturb(path: Path, key: str, fraction: float, seed: int = 7) -> None:
    """Add seeded noise of ``fraction`` times its std to one tensor of a saved state dict."""
    state = torch.load(path, weights_only=True)
    weight = state[key]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed))
    state[key] = weight + noise * weight.std() * fraction
    torch.save(state, path)


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other installed plugins would be imported anew by every run (pytester
    # forgets a run's imports), seconds each, and could change the output.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def one_thread():
    # The models here are tiny: waking a pool of threads costs more than the
    # work, about 2.5x the time of this file on 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # The plugin module is imported already (by this session), so pytest warns that it cannot rewrite it.
    return pytester.runpytest("-p", "heatmap.testing.pytest_plugin", "-p", "no:cacheprovider",
                              "-W", "ignore::pytest.PytestAssertRewriteWarning", *args)


TEST_VIT = '''
def test_vit(heatmap_snapshot, image):
    maps = heatmap_snapshot(build_vit(), image, method="chefer-generic", target=2)
    assert maps.shape == (4, 4) and maps.dtype == "float32"
'''


def test_the_entry_point_loads_the_plugin(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    pytester.makepyfile(test_fixture="def test_fixture(heatmap_snapshot):\n    assert callable(heatmap_snapshot)\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--help")
    assert "--heatmap-update" in result.stdout.str() and "heatmap_max_diff" in result.stdout.str()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_first_run_writes_the_snapshot_and_fails_then_the_next_passes(pytester):
    vit_suite(pytester, TEST_VIT)
    first = run(pytester)
    first.assert_outcomes(failed=1)
    output = first.stdout.str()
    assert "heatmap snapshot written: test_model/test_vit.npy" in output
    assert "commit both files and rerun" in output
    assert "Traceback" not in output and "pytest_plugin.py" not in output

    folder = pytester.path / "test_model"  # named after the test module
    assert sorted(path.name for path in folder.iterdir()) == ["test_vit.json", "test_vit.npy"]
    stored = np.load(folder / "test_vit.npy")
    assert stored.shape == (4, 4) and stored.dtype == np.float32
    record = json.loads((folder / "test_vit.json").read_text())
    assert record["method"] == "chefer-generic"
    assert record["options"] == {"start_layer": 0}
    assert record["target"] == 2 and record["map_shape"] == [4, 4]
    assert record["vit_heatmap"] == heatmap.__version__
    assert isinstance(record["score"], float)

    run(pytester).assert_outcomes(passed=1)
    assert np.load(folder / "test_vit.npy").tobytes() == stored.tobytes()  # compared, not rewritten


def test_a_changed_weight_fails_naming_the_metric_and_update_accepts_it(pytester):
    vit_suite(pytester, TEST_VIT)
    run(pytester).assert_outcomes(failed=1)
    run(pytester).assert_outcomes(passed=1)
    before = np.load(pytester.path / "test_model" / "test_vit.npy")

    perturb(pytester.path / "vit.pt", "blocks.1.attn.qkv.weight", 0.05)
    changed = run(pytester)
    changed.assert_outcomes(failed=1)
    output = changed.stdout.str()
    assert "heatmap snapshot test_model/test_vit.npy: the maps differ (chefer-generic" in output
    assert re.search(r"target 2: .*corr 0\.\d+ < 0\.999", output)
    assert re.search(r"score -?\d\S* -> -?\d\S* \([+-]", output)
    assert "pytest --heatmap-update" in output
    assert "Traceback" not in output

    run(pytester, "--heatmap-update").assert_outcomes(passed=1)
    assert not np.array_equal(np.load(pytester.path / "test_model" / "test_vit.npy"), before)
    run(pytester).assert_outcomes(passed=1)


TEST_PIXELS = '''
def test_pixels(heatmap_snapshot, image):
    maps = heatmap_snapshot(build_vit(), image, method="full-lrp", target=2)
    assert maps.shape == (32, 32)
'''


def test_pixel_level_maps_are_snapshotted_like_any_other(pytester):
    vit_suite(pytester, TEST_PIXELS)
    run(pytester).assert_outcomes(failed=1)
    folder = pytester.path / "test_model"
    assert json.loads((folder / "test_pixels.json").read_text())["map_shape"] == [32, 32]
    assert np.load(folder / "test_pixels.npy").shape == (32, 32)
    run(pytester).assert_outcomes(passed=1)
    perturb(pytester.path / "vit.pt", "patch_embed.proj.weight", 0.05)
    changed = run(pytester)
    changed.assert_outcomes(failed=1)
    assert "the maps differ (full-lrp" in changed.stdout.str()


def test_ini_thresholds_and_per_call_overrides(pytester):
    vit_suite(pytester, TEST_VIT)
    run(pytester)
    # A change small enough that only max-diff notices it (about 0.02; corr stays above 0.9998).
    perturb(pytester.path / "vit.pt", "blocks.1.attn.qkv.weight", 0.001)
    strict = run(pytester)
    strict.assert_outcomes(failed=1)
    default = Thresholds().max_diff
    assert re.search(rf"target 2: max-diff 0\.0\d+ > {default:g} \(corr 0\.999\d*, top-iou 1 within thresholds\)",
                     strict.stdout.str())

    pytester.makeini("[pytest]\nheatmap_max_diff = 0.05\n")
    run(pytester).assert_outcomes(passed=1)

    # The call's own threshold wins over the ini file's.
    vit_suite(pytester, TEST_VIT.replace("target=2)", "target=2, max_diff=0.005)"))
    per_call = run(pytester)
    per_call.assert_outcomes(failed=1)
    assert "max-diff" in per_call.stdout.str() and "> 0.005" in per_call.stdout.str()

    pytester.makeini("[pytest]\nheatmap_min_corr = 1.5\n")
    vit_suite(pytester, TEST_VIT.replace("target=2)", "target=2, max_diff=1)"))
    impossible = run(pytester)
    impossible.assert_outcomes(failed=1)
    assert "corr" in impossible.stdout.str() and "< 1.5" in impossible.stdout.str()


def test_a_snapshot_made_differently_fails_clearly(pytester):
    vit_suite(pytester, TEST_VIT)
    run(pytester)
    for new_call, expected in [
        ('method="rollout", target=2', 'method: snapshot "chefer-generic", now "rollout"'),
        ('method="chefer-generic", target=2, start_layer=1', "option start_layer: snapshot 0, now 1"),
        ('method="chefer-generic", target=3', "target: snapshot target 2, now target 3"),
    ]:
        vit_suite(pytester, TEST_VIT.replace('method="chefer-generic", target=2', new_call))
        result = run(pytester)
        result.assert_outcomes(failed=1)
        output = result.stdout.str()
        assert "test_model/test_vit.npy was made differently" in output and expected in output
        assert "pytest --heatmap-update" in output and "Traceback" not in output


def test_the_top_1_class_is_recorded_and_checked(pytester):
    vit_suite(pytester, '''
        def test_top1(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image.unsqueeze(0), method="rollout")
    ''')
    run(pytester)
    record_file = pytester.path / "test_model" / "test_top1.json"
    record = json.loads(record_file.read_text())
    assert record["requested_target"] is None
    top1 = int(build_tiny_logits(pytester.path / "vit.pt").argmax())
    assert record["target"] == top1
    run(pytester).assert_outcomes(passed=1)

    # As if the snapshot had been made when another class came first.
    record_file.write_text(json.dumps({**record, "target": (top1 + 1) % 5}))
    moved = run(pytester)
    moved.assert_outcomes(failed=1)
    output = " ".join(moved.stdout.str().split())
    assert f"the model's top-1 class changed from target {(top1 + 1) % 5} to target {top1}" in output
    # the model or its weights may have moved as well as the test's arguments; the fix is named
    assert "weights or the model changed, or the test's arguments did" in output
    assert "pytest --heatmap-update" in output


def build_tiny_logits(weights: Path) -> torch.Tensor:
    """The logits of the suite's tiny ViT for its image, from the saved weights."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
    model.load_state_dict(torch.load(weights, weights_only=True))
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 32, 32))[0]


def test_parametrized_tests_classes_and_names_get_distinct_files(pytester):
    vit_suite(pytester, '''
        @pytest.mark.parametrize("start_layer", [0, 1])
        @pytest.mark.parametrize("method", ["rollout", "chefer-generic"])
        def test_methods(heatmap_snapshot, image, method, start_layer):
            heatmap_snapshot(build_vit(), image, method=method, target=0, start_layer=start_layer)

        @pytest.mark.parametrize("caption", ["a red/cat?"])
        def test_odd_id(heatmap_snapshot, image, caption):
            heatmap_snapshot(build_vit(), image, target=0)

        def test_two(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image, target=0)
            heatmap_snapshot(build_vit(), image, target=1, name="second")

        class TestZoo:
            def test_two(self, heatmap_snapshot, image):
                heatmap_snapshot(build_vit(), image, target=4)
    ''', module="test_zoo")
    run(pytester)
    run(pytester)  # test_two's second snapshot is written on the second run
    assert sorted(path.name for path in (pytester.path / "test_zoo").glob("*.npy")) == [
        "TestZoo.test_two.npy",
        "test_methods-chefer-generic-0.npy", "test_methods-chefer-generic-1.npy",
        "test_methods-rollout-0.npy", "test_methods-rollout-1.npy",
        "test_odd_id-a_red_cat.npy",
        "test_two-second.npy", "test_two.npy",
    ]
    run(pytester).assert_outcomes(passed=7)
    assert json.loads((pytester.path / "test_zoo" / "test_two-second.json").read_text())["target"] == 1


def test_two_calls_sharing_a_file_fail(pytester):
    vit_suite(pytester, '''
        def test_twice(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image, target=0)
            heatmap_snapshot(build_vit(), image, target=1)

        @pytest.mark.parametrize("caption", ["a b", "a/b"])
        def test_clash(heatmap_snapshot, image, caption):
            heatmap_snapshot(build_vit(), image, target=0)
    ''')
    run(pytester)  # writes the snapshots: test_twice stops at its first call
    output = run(pytester).stdout.str()
    assert ("heatmap_snapshot: two calls in test_model.py::test_twice share the snapshot "
            "test_model/test_twice.npy; give each call its own name=") in output
    assert ("test_model.py::test_clash[a b] and test_model.py::test_clash[a/b] both map to the snapshot "
            "test_model/test_clash-a_b.npy") in output


def test_clip_stores_one_map_per_text(pytester):
    pytester.makepyfile(test_clip_model=CLIP_SUITE + textwrap.dedent('''
        def test_captions(heatmap_snapshot):
            torch.manual_seed(3)
            maps = heatmap_snapshot(build_clip(), torch.randn(1, 3, 32, 32), texts=["a red circle", "a blue star"])
            assert maps.shape == (2, 4, 4)
    '''))
    first = run(pytester)
    first.assert_outcomes(failed=1)
    assert "heatmap snapshot written: test_clip_model/test_captions.npy" in first.stdout.str()
    folder = pytester.path / "test_clip_model"
    assert np.load(folder / "test_captions.npy").shape == (2, 4, 4)
    record = json.loads((folder / "test_captions.json").read_text())
    assert record["texts"] == ["a red circle", "a blue star"] and len(record["logits"]) == 2
    assert record["options"] == {"start_layer": -1, "text_start_layer": -1}
    run(pytester).assert_outcomes(passed=1)

    perturb(pytester.path / "clip.pt", "visual.transformer.resblocks.2.attn.in_proj_weight", 0.05)
    changed = run(pytester)
    changed.assert_outcomes(failed=1)
    output = changed.stdout.str()
    assert "text 'a red circle': " in output and "text 'a blue star': " in output
    assert re.search(r"(max-diff|corr|top-iou) \S+ [<>] ", output) and "logit " in output


def test_bad_arguments_fail_in_one_message(pytester):
    vit_suite(pytester, '''
        def test_image_shape(heatmap_snapshot):
            heatmap_snapshot(build_vit(), torch.zeros(2, 3, 32, 32))

        def test_option(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image, method="rollout", colour="red")

        def test_texts_for_a_classifier(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image, texts=["a cat"])

        def test_threshold(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image, min_corr="high")
    ''')
    pytester.makeini("[pytest]\n")
    result = run(pytester)
    result.assert_outcomes(failed=4)
    output = result.stdout.str()
    assert "a tensor image must be [3, H, W] or [1, 3, H, W], got [2, 3, 32, 32]" in output
    assert "rollout has no option ['colour']" in output
    assert "texts= is for CLIP models" in output
    assert "heatmap_snapshot(min_corr=...) must be a number, got 'high'" in output
    assert "Traceback" not in output and not (pytester.path / "test_model").exists()


def test_a_path_and_a_pil_image_give_the_same_map(pytester):
    (pytester.path / "sample_images").mkdir()
    shutil.copy(ROOT / README_SCENE, pytester.path / README_SCENE)
    pytester.makepyfile(test_demo=f'''
        import pytest
        from PIL import Image

        @pytest.mark.parametrize("as_pil", [False, True])
        def test_heart(heatmap_snapshot, as_pil):
            image = Image.open("{README_SCENE}") if as_pil else "{README_SCENE}"
            heatmap_snapshot("demo", image, target="heart")
    ''')
    run(pytester).assert_outcomes(failed=2)
    folder = pytester.path / "test_demo"
    path_map, pil_map = np.load(folder / "test_heart-False.npy"), np.load(folder / "test_heart-True.npy")
    assert path_map.shape == (12, 12) and np.array_equal(path_map, pil_map)
    record = json.loads((folder / "test_heart-True.json").read_text())
    assert record["image"] == "PIL image 96x96 RGB" and record["label"] == "heart" and record["model"] == "demo"
    assert record["requested_target"] == "heart" and record["target"] == 5


def test_an_unreadable_snapshot_fails_clearly(pytester):
    vit_suite(pytester, TEST_VIT)
    run(pytester)
    (pytester.path / "test_model" / "test_vit.json").write_text("{not json")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "heatmap snapshot test_model/test_vit.npy is unreadable" in output
    assert "pytest --heatmap-update" in output and "Traceback" not in output


def test_importing_the_plugin_imports_no_torch():
    code = ("import sys, heatmap.testing.pytest_plugin; "
            "heavy = [name for name in ('torch', 'timm', 'open_clip', 'numpy') if name in sys.modules]; "
            "sys.exit(f'imported {heavy}' if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def readme_example() -> str:
    """The first ```python block after README's heading "### Snapshot tests in pytest"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    heading = re.search(r"^### Snapshot tests in pytest$", text, re.M)
    assert heading, "README.md has no section '### Snapshot tests in pytest'"
    block = re.search(r"^```python\n(.*?)^```", text[heading.end():], re.M | re.S)
    assert block, "README's section 'Snapshot tests in pytest' has no ```python block"
    return block.group(1)


def test_readme_example_runs(pytester):
    example = readme_example()
    (pytester.path / "sample_images").mkdir()
    shutil.copy(ROOT / README_SCENE, pytester.path / README_SCENE)
    pytester.makepyfile(test_readme_example=example)
    first = run(pytester)
    assert first.ret != 0 and "heatmap snapshot written" in first.stdout.str()
    assert list((pytester.path / "test_readme_example").glob("*.npy"))
    second = run(pytester)
    assert second.ret == 0, second.stdout.str()


@pytest.mark.parametrize("keep", [0, 60, -8])  # empty, in the header, in the data
def test_a_truncated_snapshot_fails_in_one_message(pytester, keep):
    vit_suite(pytester, TEST_VIT)
    run(pytester)
    npy = pytester.path / "test_model" / "test_vit.npy"
    npy.write_bytes(npy.read_bytes()[:keep])
    result = run(pytester)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "heatmap snapshot test_model/test_vit.npy is unreadable" in output
    assert "pytest --heatmap-update" in output
    assert "During handling of the above exception" not in output and "Traceback" not in output
