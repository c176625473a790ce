"""Every shipped adapter against the protocols of ``heatmap.models.protocols``, member by member.

The driver, the pipeline, ``heatmap eval`` and the CLI read adapters only
through those protocols, so an adapter that passes here works in all of
them. Each adapter runs on the tiny models of ``helpers`` (32x32 inputs) or
the shipped demo models (96x96), one or two images: the test calls each
declared member and checks the types, shapes and dtypes of what comes back,
not only that the member is there. The tiny timm and transformers models
were built by hand, so their transform is their library's default
(224x224), not their input size: the forward passes run on tensors at the
model's input size, and the transform and ``preprocess`` are checked on
their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

import heatmap
from heatmap.errors import UnsupportedModelError
from heatmap.evaluation.data import split_normalisation
from heatmap.models import adapter_for, load_clip
from heatmap.models.protocols import (
    Adapter,
    AttentionCapture,
    ClassifierAdapter,
    Grid,
    ImageTextAdapter,
    LrpView,
    Scored,
    Spans,
    Tower,
    TowerScores,
    is_classifier,
    is_image_text,
)
from helpers.models import TEXTS, tiny_clip, tiny_vit

# Unit embeddings are normalised in float32: norms measured 1 +- 1.2e-7, checked at 1e-5.
UNIT_NORM = 1e-5
# A score under the attention capture (the explicit attention path) against the plain forward pass, and
# score_texts against score(image_embeddings, text_embeddings): float32 round-off, measured at most 1.9e-6
# absolute and 1.8e-6 relative over the seven adapters, checked at 1e-4.
SAME_SCORE = 1e-4
# A float32 softmax row sums to 1 within a few ulps of its N terms.
ROW_SUM = 1e-5
LONG_TEXT = " ".join(["a red circle on grass"] * 40)  # longer than every model's context


def build_timm(_folder):
    return adapter_for(tiny_vit())


def build_open_clip(_folder):
    return adapter_for(tiny_clip())


def build_transformers_vit(_folder):
    pytest.importorskip("transformers")
    from helpers.hf_models import vit_pair

    return adapter_for(vit_pair("vit")[1])


def build_transformers_clip(folder):
    pytest.importorskip("transformers")
    from helpers.hf_models import clip_pair, clip_tokenizer

    return adapter_for(clip_pair()[1], processor=clip_tokenizer(folder))


def build_transformers_siglip(_folder):
    pytest.importorskip("transformers")
    from helpers.hf_models import siglip_tokenizer, tiny_siglip

    return adapter_for(tiny_siglip(), processor=siglip_tokenizer())


def build_timm_eva(_folder):
    # EVA02's parts: RoPE, SwiGLU, registers, mean pooling
    from timm.models.eva import Eva

    torch.manual_seed(0)
    return adapter_for(Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                           num_reg_tokens=2, global_pool="avg", use_rot_pos_emb=True, swiglu_mlp=True))


def build_timm_siglip(_folder):
    # SigLIP's structure in timm: no class token, an attention-pool head
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return adapter_for(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                         num_classes=5, class_token=False, global_pool="map"))


def build_open_clip_siglip(folder):
    pytest.importorskip("transformers")
    import open_clip

    from helpers.open_clip_siglip import MODEL, random_siglip, register

    register(folder)
    return adapter_for(random_siglip(), processor=open_clip.get_tokenizer(MODEL))


def build_demo_classifier(_folder):
    return heatmap.load("demo", device="cpu")


def build_demo_clip(_folder):
    return load_clip("demo", device="cpu")


BUILDERS: dict[str, Callable[..., Adapter]] = {
    "timm": build_timm, "open_clip": build_open_clip, "transformers-vit": build_transformers_vit,
    "transformers-clip": build_transformers_clip, "transformers-siglip": build_transformers_siglip,
    "demo": build_demo_classifier, "demo-clip": build_demo_clip, "timm-eva": build_timm_eva,
    "timm-siglip": build_timm_siglip, "open_clip-siglip": build_open_clip_siglip,
}
IMAGE_TEXT = ["open_clip", "transformers-clip", "transformers-siglip", "demo-clip", "open_clip-siglip"]
CLASSIFIERS = [name for name in BUILDERS if name not in IMAGE_TEXT]


INPUT_SIZE = {"demo": 96, "demo-clip": 96}  # the tiny models': 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the models are tiny, and on a busy machine threads waiting on each other make small
    forward passes many times slower. The previous setting is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=list(BUILDERS))
def adapter(request, tmp_path_factory) -> Adapter:
    return BUILDERS[request.param](tmp_path_factory.mktemp("tokenizer") / "files")


@pytest.fixture
def images(adapter, request) -> torch.Tensor:
    """Two images ``[2, 3, S, S]`` at the model's input size, on its device and in its dtype."""
    size = INPUT_SIZE.get(request.node.callspec.params["adapter"], 32)
    generator = torch.Generator().manual_seed(11)
    return torch.randn(2, 3, size, size, generator=generator).to(device=adapter.device, dtype=adapter.dtype)


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    """Two RGB pictures of other sizes than any model's input (the transform resizes and crops)."""
    generator = torch.Generator().manual_seed(7)
    return [Image.fromarray((torch.rand(height, width, 3, generator=generator) * 255).byte().numpy())
            for height, width in ((50, 70), (64, 40))]


@contextmanager
def capturing(adapter: Adapter) -> Iterator[list[AttentionCapture]]:
    """Within: every tower's attention capture, the gradients tracked from block 0 (as the driver opens them)."""
    with ExitStack() as stack, torch.enable_grad():
        yield [stack.enter_context(tower.attention_capture(0)) for tower in adapter.towers]


# -- Adapter -----------------------------------------------------------------------


def test_the_adapter_is_of_exactly_one_kind(adapter, request):
    assert isinstance(adapter, Adapter)
    expect_image_text = request.node.callspec.params["adapter"] in IMAGE_TEXT
    assert is_image_text(adapter) is expect_image_text
    assert is_classifier(adapter) is not expect_image_text
    assert isinstance(adapter, ImageTextAdapter) is expect_image_text
    assert isinstance(adapter, ClassifierAdapter) is not expect_image_text


def test_plain_members(adapter):
    assert isinstance(adapter.name, str) and adapter.name
    assert isinstance(adapter.model, torch.nn.Module) and not adapter.model.training
    assert adapter.labels is None or all(isinstance(label, str) for label in adapter.labels)
    parameter = next(adapter.model.parameters())
    assert isinstance(adapter.device, torch.device) and adapter.device == parameter.device
    assert isinstance(adapter.dtype, torch.dtype) and adapter.dtype == parameter.dtype == torch.float32


def test_towers(adapter):
    towers = adapter.towers
    assert [tower.kind for tower in towers] == (["image", "text"] if is_image_text(adapter) else ["image"])
    for tower in towers:
        assert isinstance(tower, Tower)
        assert isinstance(tower.name, str) and tower.name
        assert isinstance(tower.num_blocks, int) and tower.num_blocks > 0
        assert isinstance(tower.num_prefix_tokens, int) and tower.num_prefix_tokens >= 0
        if tower.kind == "text":
            assert tower.num_prefix_tokens == 0 and tower.class_token is None
        assert tower.class_token is None or (isinstance(tower.class_token, int)
                                             and 0 <= tower.class_token < max(tower.num_prefix_tokens, 1))
        problem = tower.block_readout_problem()
        assert problem is None or (isinstance(problem, str) and problem)
        try:
            view = tower.lrp_view()
        except UnsupportedModelError as error:
            assert str(error)
        else:
            assert isinstance(view, LrpView) and len(view.blocks) == tower.num_blocks
            assert view.pooling in ("token", "mean") and view.start in ("logit", "embedding")
            assert callable(view.capture)


def test_transform_and_preprocess(adapter, pictures):
    single = adapter.transform(pictures[0])
    assert isinstance(single, torch.Tensor) and single.dtype == torch.float32 and single.device.type == "cpu"
    assert single.dim() == 3 and single.shape[0] == 3
    # heatmap eval perturbs pixels before the transform's final Normalize
    pixel_transform, mean, std = split_normalisation(adapter.transform)
    assert len(mean) == len(std) == 3 and all(value > 0 for value in std)
    pixels = pixel_transform(pictures[0])
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(normalised, single)

    tensor, boxes = adapter.preprocess(pictures)
    assert tensor.shape == (2, *single.shape)
    assert tensor.device == adapter.device and tensor.dtype == adapter.dtype
    torch.testing.assert_close(tensor[0], single.to(adapter.dtype), rtol=0, atol=0)
    assert len(boxes) == 2
    for box, picture in zip(boxes, pictures, strict=True):
        left, top, right, bottom = box
        assert all(isinstance(value, float) for value in box)
        assert left < right and top < bottom
        assert right - left <= picture.size[0] + 1 and bottom - top <= picture.size[1] + 1


def test_label(adapter):
    if adapter.labels:
        assert adapter.label(0) == adapter.labels[0]
        assert adapter.label(len(adapter.labels)) is None
    else:
        assert adapter.label(0) is None
    assert adapter.label(-1) is None


def test_converted(adapter, pictures):
    assert adapter.converted(adapter.dtype) is adapter
    wide = adapter.converted(torch.float64)
    assert isinstance(wide, Adapter) and type(wide) is type(adapter)
    assert wide.dtype == torch.float64 and adapter.dtype == torch.float32  # a copy: the caller's model stays
    assert wide.name == adapter.name and len(wide.towers) == len(adapter.towers)
    assert wide.preprocess(pictures[:1])[0].dtype == torch.float64


# -- ClassifierAdapter -------------------------------------------------------------


@pytest.mark.parametrize("adapter", CLASSIFIERS, indirect=True)
def test_classifier_members(adapter, images):
    with torch.no_grad():
        logits = adapter.logits(images)
    assert logits.dim() == 2 and logits.shape[0] == 2 and logits.dtype == adapter.dtype
    classes = logits.shape[1]
    assert adapter.labels is None or len(adapter.labels) == classes

    assert adapter.class_index("0") == 0 and adapter.class_index(str(classes - 1)) == classes - 1
    if adapter.labels:
        assert adapter.class_index(adapter.labels[1]) == 1
        assert adapter.class_index(adapter.labels[1].upper()) == 1

    with capturing(adapter) as captures:
        scored = adapter.score(images, None, 2)
        assert isinstance(scored, Scored)
        (side,) = scored.towers
        check_tower_side(side, adapter.towers[0], items=2, objectives=2, capture=captures[0])
    assert scored.targets.dtype == torch.long and scored.targets.shape == (2, 2)
    assert torch.equal(scored.targets, logits.topk(2, dim=1).indices.to(scored.targets.device))
    torch.testing.assert_close(scored.scores.detach(), logits.gather(1, scored.targets), rtol=SAME_SCORE,
                               atol=SAME_SCORE)
    assert scored.labels == [[adapter.label(int(t)) for t in row] for row in scored.targets.tolist()]
    assert scored.word_pieces is None
    assert isinstance(side.readout, Grid)
    assert side.readout_weights is not None
    for weights in side.readout_weights:
        assert weights.shape == (2, classes)

    given = torch.tensor([[1], [0]])
    with torch.no_grad():
        again = adapter.score(images, given, 1)
    assert torch.equal(again.targets.cpu(), given)


# -- ImageTextAdapter --------------------------------------------------------------


@pytest.mark.parametrize("adapter", IMAGE_TEXT, indirect=True)
def test_image_text_members(adapter, images):
    assert isinstance(adapter.independent_texts, bool)
    assert adapter.independent_texts is (getattr(adapter.model, "logit_bias", None) is not None)  # a SigLIP

    tokens = adapter.tokenize(TEXTS)
    assert tokens.dtype == torch.long and tokens.dim() == 2 and tokens.shape[0] == len(TEXTS)
    assert tokens.device == adapter.device
    with torch.no_grad():
        image_embedding = adapter.image_embeddings(images)
        text_embedding = adapter.text_embeddings(tokens)
        logits = adapter.score(image_embedding, text_embedding)
    width = image_embedding.shape[1]
    assert image_embedding.shape == (2, width) and text_embedding.shape == (len(TEXTS), width)
    for embedding in (image_embedding, text_embedding):
        assert embedding.dtype == adapter.dtype
        torch.testing.assert_close(embedding.norm(dim=1), torch.ones(len(embedding)), rtol=0, atol=UNIT_NORM)
    assert logits.shape == (2, len(TEXTS)) and logits.dtype == adapter.dtype

    cut = adapter.truncated([TEXTS[0], LONG_TEXT])
    assert cut == [False, True]

    with capturing(adapter) as captures:
        scored = adapter.score_texts(images, TEXTS)
        assert isinstance(scored, Scored)
        image_side, text_side = scored.towers
        check_tower_side(image_side, adapter.towers[0], items=2, objectives=len(TEXTS), capture=captures[0])
        check_tower_side(text_side, adapter.towers[1], items=len(TEXTS), objectives=2, capture=captures[1])
    torch.testing.assert_close(scored.scores.detach(), logits, rtol=SAME_SCORE, atol=SAME_SCORE)
    assert torch.equal(scored.targets.cpu(), torch.arange(len(TEXTS)).expand(2, -1))
    assert scored.labels == [list(TEXTS)] * 2
    assert scored.word_pieces is not None and len(scored.word_pieces) == len(TEXTS)
    assert all(isinstance(piece, str) for pieces in scored.word_pieces for piece in pieces)
    assert isinstance(image_side.readout, Grid) and isinstance(text_side.readout, Spans)
    for (start, stop), pieces in zip(text_side.readout.spans, scored.word_pieces, strict=True):
        assert 0 <= start <= stop <= tokens.shape[1] and stop - start == len(pieces)


# -- what one tower's side of a scored pass holds ------------------------------------


def check_tower_side(side: TowerScores, tower: Tower, items: int, objectives: int, capture: AttentionCapture
                     ) -> None:
    """A :class:`TowerScores` against its tower and its open capture of the same forward pass."""
    assert side.tower is tower
    assert side.objectives.shape == (objectives,) and side.objectives.requires_grad
    assert len(side.lrp_targets) == objectives
    probs = capture.attention_probs
    assert len(probs) == tower.num_blocks
    tokens = probs[0].shape[-1]
    for block in probs:
        assert block.dim() == 4 and block.shape[0] == items and block.shape[-2:] == (tokens, tokens)
        # each row is a distribution, or all zero: the probe's row of a block, the head's other rows (an
        # attention-pool head's layout, docs/METHODS.md "Modern ViT parts")
        sums = block.detach().sum(dim=-1).double()
        padding = block.detach().abs().sum(dim=-1) == 0
        torch.testing.assert_close(sums, (~padding).double(), rtol=0, atol=ROW_SUM)
        assert (~padding).any(dim=-1).all()  # every layer of every item attends somewhere
    tracked = capture.tracked()
    assert len(tracked) == tower.num_blocks and tracked[0].requires_grad
    assert side.query.shape == (items, tokens)
    torch.testing.assert_close(side.query.sum(dim=1).double(), torch.ones(items, dtype=torch.float64))
    if isinstance(side.readout, Grid):
        assert side.readout.num_prefix_tokens == tower.num_prefix_tokens
        assert tower.num_prefix_tokens + side.readout.height * side.readout.width == tokens
    else:
        assert len(side.readout.spans) == items
    if side.readout_weights is not None:
        assert len(side.readout_weights) == objectives
    if side.readout_weights is not None and tower.block_readout_problem() is None:
        # the blocks' outputs are kept for the read-out; an attention-pool head, the last layer, has none, and
        # its probe is not among the model's own tokens
        outputs = capture.block_outputs
        pooled = tower.num_blocks - len(outputs)
        assert len(capture.tracked_blocks()) == len(outputs) and pooled in (0, 1)
        assert all(output.shape[:2] == (items, tokens - pooled) for output in outputs)
        readout = tower.block_readout(outputs[-1])
        assert readout.dim() == 2 and readout.shape[0] == items
        assert side.readout_weights[0].shape == readout.shape
    # one gradient through the tracked probabilities, as a gradient method takes it
    gradient = torch.autograd.grad(side.objectives[0], tracked[0], retain_graph=True)[0]
    assert gradient.shape == tracked[0].shape and torch.isfinite(gradient).all()


# -- an adapter with nothing but the declared members ------------------------------


def declared(protocol: type) -> set[str]:
    """The members ``protocol`` declares, with those of the protocols it extends."""
    return {name for cls in protocol.__mro__ if cls.__module__ == "heatmap.models.protocols"
            for name in [*vars(cls), *getattr(cls, "__annotations__", {})] if not name.startswith("_")}


class OnlyDeclared:
    """A shipped adapter seen through one protocol: any member the protocol does not declare is missing.

    What a new model family written against the protocols alone provides; its
    converted copies are seen the same way.
    """

    def __init__(self, inner: Adapter, protocol: type) -> None:
        self._inner, self._protocol, self._names = inner, protocol, declared(protocol)

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self._names:
            raise AttributeError(f"{name} is not declared by {self._protocol.__name__}")
        if name == "converted":
            return lambda dtype: OnlyDeclared(self._inner.converted(dtype), self._protocol)
        return getattr(self._inner, name)


DEMO_TEXTS = ["a red circle", "a blue star", "a green heart"]


@pytest.mark.parametrize("adapter", ["demo", "demo-clip"], indirect=True)
def test_an_adapter_with_only_the_declared_members_explains_and_evaluates(adapter):
    """The pipeline (the CLI's and the pytest plugin's path) and ``heatmap.evaluate`` read nothing else."""
    from heatmap.explainers.driver import Driver
    from heatmap.pipeline import Pipeline

    protocol = ImageTextAdapter if is_image_text(adapter) else ClassifierAdapter
    bare = OnlyDeclared(adapter, protocol)
    assert isinstance(bare, protocol)
    with pytest.raises(AttributeError, match="not declared"):
        bare.rebuilt  # noqa: B018  (a member of the shipped adapters' base class, not of the protocol)
    picture = Image.open(Path(__file__).parent.parent / "sample_images" /
                         "shapes_002_red-heart_pink-cross.png").convert("RGB")
    texts = DEMO_TEXTS if is_image_text(adapter) else None
    targets = None if texts is not None else ["heart"]
    runs = []
    for model in (adapter, bare):
        # precision float64: the driver explains a converted copy, so converted() is on the path too
        pipeline = Pipeline(Driver(model, "chefer-generic", precision="float64"), targets=targets, texts=texts)
        records = pipeline.explain([picture])[0]
        lines = heatmap.evaluate(model, [picture], "chefer-generic", protocol="perturbation", texts=texts,
                                 batch_size=8)
        runs.append((records, lines))
    (records, lines), (bare_records, bare_lines) = runs
    assert [record.fields for record in bare_records] == [record.fields for record in records]
    for record, bare_record in zip(records, bare_records, strict=True):
        assert torch.equal(torch.from_numpy(bare_record.heatmap), torch.from_numpy(record.heatmap))
    assert [line.as_json() for line in bare_lines] == [line.as_json() for line in lines]
