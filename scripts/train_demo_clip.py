"""Train the shipped demo CLIP contrastively on shapes-world scenes.

    python scripts/train_demo_clip.py [--steps 700] [--out models/demo]

The model is an ``open_clip.CLIP``: a 4-block image tower of the demo
classifier's size and a 2-block causal text tower over open_clip's own
tokenizer. The image tower starts from the shipped demo classifier
(``demo/classifier.*``, trained by ``scripts/train_demo_classifier.py``):
its convolutional stem takes ``conv1``'s place and its blocks, class token,
position embedding and norms are copied into open_clip's modules, which
have the same layout. Starting the image tower from a trained image model
and the text tower from scratch is how LiT (Zhai et al., 2022) trains CLIPs
cheaply; here the image tower is fine-tuned too, so that it learns colours,
which the classifier never needed.

Two losses, summed:

- symmetric InfoNCE (open_clip's ClipLoss) with a learnable logit scale
  between the scenes of a batch and their captions: every scene gets the
  caption of one of its objects ("a red circle", sometimes "red circle" or
  "a photo of a red circle"), and the main-form caption of every colour and
  shape follows. A caption true of several scenes, or a scene that several
  captions describe, counts every true pair as a positive;
- token labels (as in Jiang et al., 2021, "All Tokens Matter"): each patch
  token whose centre pixel lies on an object, projected like the pooled
  embedding, is classified against the captions of all colour-shape pairs.

Deterministic for a given thread count: fixed seeds, two threads, a fixed
number of steps. Writes ``clip.json`` and ``clip.safetensors`` (the rows of
the token embedding that no caption uses are left out; the loader restores
them as zeros), then evaluates the written files through the loader:
image-text retrieval on 1,000 held-out scenes and the pointing game of
chefer-generic on the tests' 100 held-out two-to-three-object scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heatmap.demo.clip import USED_IDS_KEY, USED_ROWS_KEY, build_demo_clip
from heatmap.demo.shapes_world import COLORS, SHAPES, make_scenes

DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
CONTEXT_LENGTH = 16
VOCAB_SIZE = 49408
# Caption forms and how often each is drawn. "{a}" is the article of the
# colour ("a red", "an orange"); the first form is the main one, the one
# shapes_world.SceneObject.caption writes and the evaluation uses.
TEMPLATES = (
    ("{a} {color} {shape}", 0.6),
    ("{color} {shape}", 0.15),
    ("a photo of {a} {color} {shape}", 0.15),
    ("a picture of {a} {color} {shape}", 0.1),
)
KEYS: list[tuple[str, str]] = [(color, shape) for color in COLORS for shape in SHAPES]
TRAIN_SEED, HELD_OUT_SEED, POINTING_SEED = 4321, 424242, 777


def caption(template: str, color: str, shape: str) -> str:
    """One caption of a colour and shape in a template's form."""
    article = "an" if color[0] in "aeiou" else "a"
    return template.format(a=article, color=color, shape=shape)


def all_captions() -> list[str]:
    """Every caption the training can draw: all templates x colours x shapes."""
    return [caption(template, color, shape) for template, _ in TEMPLATES for color, shape in KEYS]


class CompactVocabulary:
    """Maps the BPE ids of the training captions onto ``0..K-1``, keeping their order.

    Training a 49408-row embedding of which a few dozen rows are ever used
    would spend most of each optimiser step on untouched rows; a compact
    table trains the same function. The order is kept so that the end-of-text
    token, the largest id, stays the largest: open_clip pools the text at
    ``argmax`` of the ids.
    """

    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer = tokenizer
        self.used_ids = torch.unique(tokenizer(texts))  # sorted ascending
        self.lookup = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
        self.lookup[self.used_ids] = torch.arange(len(self.used_ids))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Compact ids ``[T, context_length]`` of ``texts``."""
        compact = self.lookup[self.tokenizer(texts)]
        if bool((compact < 0).any()):
            raise ValueError("a caption uses a token outside the training vocabulary")
        return compact


class ScenePool:
    """Scenes drawn once, as tensors: images, which colour-shape pairs each holds, token labels."""

    def __init__(self, count: int, seed: int, patch: int):
        scenes = make_scenes(count, seed=seed)
        self.images = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2)
        self.objects = [[KEYS.index((o.color, o.shape)) for o in s.objects] for s in scenes]
        self.present = torch.zeros(count, len(KEYS), dtype=torch.bool)
        centre = np.arange(patch // 2, scenes[0].image.size[0], patch)
        labels = np.full((count, len(centre), len(centre)), -1, dtype=np.int64)
        for n, scene in enumerate(scenes):
            for obj, key in zip(scene.objects, self.objects[n], strict=False):
                self.present[n, key] = True
                labels[n][obj.mask[np.ix_(centre, centre)]] = key
        self.patch_labels = torch.from_numpy(labels)


def draw_batch(pool: ScenePool, rng: np.random.Generator, batch_size: int):
    """A batch of the pool under one random quarter turn and flip, with its captions.

    Returns:
        images (uint8 ``[B, 3, H, W]``); captions (``[B + E]`` strings: one per
        scene, then the main form of every colour-shape pair); positives, bool
        ``[B, B + E]``: scene i holds the pair caption j names; and token
        labels, long ``[B, gh, gw]``: the ``KEYS`` index of the object under
        each patch's centre pixel, or -1.
    """
    index = rng.integers(len(pool.images), size=batch_size)
    probabilities = np.array([p for _, p in TEMPLATES])
    keys, captions = [], []
    for n in index:
        key = pool.objects[n][int(rng.integers(len(pool.objects[n])))]
        template = TEMPLATES[int(rng.choice(len(TEMPLATES), p=probabilities))][0]
        keys.append(key)
        captions.append(caption(template, *KEYS[key]))
    captions += [caption(TEMPLATES[0][0], color, shape) for color, shape in KEYS]
    keys += range(len(KEYS))
    index_t = torch.from_numpy(index)
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    images = torch.rot90(pool.images[index_t], turns, dims=(2, 3))
    labels = torch.rot90(pool.patch_labels[index_t], turns, dims=(1, 2))
    if flip:
        images, labels = images.flip(3), labels.flip(2)
    return images, captions, pool.present[index_t][:, keys], labels


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def multi_positive_clip_loss(logits_per_image: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (open_clip's ClipLoss) with every true pair as a positive.

    Args:
        logits_per_image: ``[B, T]``, ``logit_scale * cos(image_i, text_j)``.
        positives: bool ``[B, T]``; every image has at least one positive.

    Returns:
        The mean of the image->text cross entropy (over all T texts) and the
        text->image cross entropy (over the B images, for each text true of at
        least one image), against targets spread evenly over the positives.
    """
    targets = positives.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * logits_per_image.log_softmax(1)).sum(1).mean()
    queried = positives.any(0)
    column_targets = targets[:, queried] / targets[:, queried].sum(0, keepdim=True)
    text_to_image = -(column_targets * logits_per_image[:, queried].log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def token_label_loss(patch_embeddings: torch.Tensor, key_text_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of each object patch against the captions of all colour-shape pairs.

    Args:
        patch_embeddings: ``[B, G, D]``, patch tokens after ``ln_post`` and ``proj``, as the
            class token is projected.
        key_text_embeddings: ``[E, D]``, unit text embeddings of the ``KEYS`` captions.
        logit_scale: the model's (exponentiated) logit scale.
        labels: long ``[B, gh, gw]``, an index into ``KEYS`` or -1 (background, left out).
    """
    labels = labels.flatten(1)
    on_object = labels >= 0
    logits = logit_scale * F.normalize(patch_embeddings[on_object], dim=-1) @ key_text_embeddings.T
    return F.cross_entropy(logits, labels[on_object])


def classifier_config(folder: Path) -> dict:
    """``classifier.json``, checked to be the pre-norm, class-token, conv-stem ViT the transfer needs."""
    config = json.loads((folder / "classifier.json").read_text())
    args = config["model_args"]
    if config.get("patch_embed") != "conv_stem" or not args.get("pre_norm") or args.get("global_pool") != "token":
        raise SystemExit(f"{folder / 'classifier.json'}: the image tower starts from a pre-norm, class-token "
                         "demo classifier with the convolutional stem; train one with train_demo_classifier.py")
    return config


def image_tower_from_classifier(visual: torch.nn.Module, classifier: dict[str, torch.Tensor]) -> None:
    """Copy a timm ``VisionTransformer`` state (pre-norm, class token) into open_clip's ``VisionTransformer``.

    timm's and open_clip's pre-norm blocks compute the same function: qkv is
    ``in_proj``, the attention's proj is ``out_proj``, fc1/fc2 are c_fc/c_proj.
    ``proj`` (width -> embedding) has no counterpart and stays as initialised.
    """
    names = {"cls_token": "class_embedding", "pos_embed": "positional_embedding",
             "norm_pre.weight": "ln_pre.weight", "norm_pre.bias": "ln_pre.bias",
             "norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias"}
    block_parts = {"norm1": "ln_1", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
                   "attn.proj": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    state = {}
    for key, value in classifier.items():
        if key.startswith("patch_embed.proj."):
            state["conv1." + key.removeprefix("patch_embed.proj.")] = value
        elif key in names:
            state[names[key]] = value.reshape(-1) if key == "cls_token" else value.reshape(value.shape[-2:])
        elif key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            for timm_part, clip_part in block_parts.items():
                if rest.startswith(timm_part):
                    rest = clip_part + rest.removeprefix(timm_part)
                    break
            state[f"transformer.resblocks.{index}.{rest}"] = value
    missing, unexpected = visual.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"proj"}:
        raise SystemExit(f"the classifier does not fit the image tower: missing {missing}, unexpected {unexpected}")


def learning_rate(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero: a factor of the peak rate."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def retrieval(model, tokenizer, mean: torch.Tensor, std: torch.Tensor, seed: int, count: int) -> dict:
    """Retrieval on held-out scenes, with the main caption form ``"a <color> <shape>"``.

    image->text: for every (scene, object) pair, the object's caption must
    score above every caption of a colour-shape pair the scene does not hold
    (the captions of the scene's other objects are also true, so they are
    left out of the ranking). text->image: for every pair present in at
    least one held-out scene, the best-scoring scene must hold it.
    """
    pool = ScenePool(count, seed, patch=8)
    text_embeddings = model.encode_text(tokenizer([caption(TEMPLATES[0][0], c, s) for c, s in KEYS]),
                                        normalize=True)
    image_embeddings = torch.cat([model.encode_image(normalize(pool.images[i:i + 250], mean, std), normalize=True)
                                  for i in range(0, count, 250)])
    similarity = image_embeddings @ text_embeddings.T  # [scenes, pairs]
    hits = pairs = 0
    for n, keys in enumerate(pool.objects):
        absent_best = similarity[n][~pool.present[n]].max()
        for key in keys:
            pairs += 1
            hits += int(similarity[n, key] > absent_best)
    queried = pool.present.any(0)
    text_hits = pool.present[similarity.argmax(0), torch.arange(len(KEYS))][queried]
    return {
        "heldout_seed": seed,
        "heldout_scenes": count,
        "image_to_text_top1": round(hits / pairs, 4),
        "image_to_text_pairs": pairs,
        "text_to_image_top1": round(float(text_hits.float().mean()), 4),
        "text_to_image_queries": int(queried.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--classifier", type=Path, default=DEMO_DIR, help="folder of classifier.json/.safetensors")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--pool", type=int, default=12000, help="training scenes drawn once, then augmented")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak rate of the text tower and projections")
    parser.add_argument("--image-lr", type=float, default=1e-3, help="peak rate of the image tower")
    parser.add_argument("--token-weight", type=float, default=1.0, help="weight of the token-label loss")
    args = parser.parse_args()

    import open_clip
    from open_clip.tokenizer import SimpleTokenizer
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    started = time.time()

    classifier = classifier_config(args.classifier)
    vision = classifier["model_args"]
    mean, std = torch.tensor(classifier["pretrained_cfg"]["mean"]), torch.tensor(classifier["pretrained_cfg"]["std"])
    config = {
        "name": "demo-clip",
        "embed_dim": 128,
        "vision_cfg": {"image_size": vision["img_size"], "patch_size": vision["patch_size"],
                       "width": vision["embed_dim"], "layers": vision["depth"],
                       "head_width": vision["embed_dim"] // vision["num_heads"], "mlp_ratio": vision["mlp_ratio"]},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": VOCAB_SIZE, "width": 128, "heads": 4,
                     "layers": 2},
        "quick_gelu": False,
        "patch_embed": "conv_stem",
        "preprocess": {"mean": mean.tolist(), "std": std.tolist(), "image_size": vision["img_size"]},
    }
    vocabulary = CompactVocabulary(SimpleTokenizer(context_length=CONTEXT_LENGTH), all_captions())
    compact = json.loads(json.dumps(config))
    compact["text_cfg"]["vocab_size"] = len(vocabulary.used_ids)
    model = build_demo_clip(compact)
    image_tower_from_classifier(model.visual, load_file(str(args.classifier / "classifier.safetensors")))
    pool = ScenePool(args.pool, TRAIN_SEED, patch=vision["patch_size"])
    print(f"{args.pool} training scenes drawn in {time.time() - started:.0f}s; "
          f"vocabulary {len(vocabulary.used_ids)} tokens", flush=True)

    image_params = list(model.visual.parameters())
    image_ids = {id(p) for p in image_params}
    image_params = [p for p in image_params if p is not model.visual.proj]
    other_params = [p for p in model.parameters() if id(p) not in image_ids or p is model.visual.proj]

    def groups(params, lr):
        decay = [p for p in params if p.ndim >= 2]
        return [{"params": decay, "lr": lr, "peak": lr, "weight_decay": 0.05},
                {"params": [p for p in params if p.ndim < 2], "lr": lr, "peak": lr, "weight_decay": 0.0}]

    optimizer = torch.optim.AdamW(groups(image_params, args.image_lr) + groups(other_params, args.lr),
                                  betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)
    # The patch tokens come back (un-projected) next to the pooled embedding,
    # for the token labels.
    model.visual.output_tokens = True
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * learning_rate(step, args.steps, warmup)
        images, captions, positives, labels = draw_batch(pool, rng, args.batch)
        image_embeddings, tokens = model.visual(normalize(images, mean, std))
        text_embeddings = model.encode_text(vocabulary(captions), normalize=True)
        logit_scale = model.logit_scale.exp()
        clip_loss = multi_positive_clip_loss(logit_scale * F.normalize(image_embeddings, dim=-1)
                                             @ text_embeddings.T, positives)
        token_loss = token_label_loss(tokens @ model.visual.proj,  # tokens come after ln_post
                                      text_embeddings[-len(KEYS):], logit_scale, labels)
        loss = clip_loss + args.token_weight * token_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  clip loss {clip_loss.item():.4f}  token loss {token_loss.item():.4f}  "
                  f"logit scale {logit_scale.item():6.2f}  {time.time() - started:.0f}s", flush=True)
    model.eval()  # BatchNorm in the stem: running statistics from here on
    minutes = (time.time() - started) / 60

    model.visual.output_tokens = False
    state = {key: value.detach().float().contiguous() for key, value in model.state_dict().items()}
    state[USED_IDS_KEY] = vocabulary.used_ids.clone()
    state[USED_ROWS_KEY] = state.pop("token_embedding.weight")
    config["training"] = {
        "script": "scripts/train_demo_clip.py", "image_tower_from": "classifier.safetensors",
        "train_seed": TRAIN_SEED, "torch_seed": 0, "steps": args.steps, "batch": args.batch, "pool": args.pool,
        "lr": args.lr, "image_lr": args.image_lr, "token_weight": args.token_weight,
        "templates": {template: p for template, p in TEMPLATES},
        "minutes": round(minutes, 1), "torch": torch.__version__, "open_clip": open_clip.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "clip.safetensors"))
    (args.out / "clip.json").write_text(json.dumps(config, indent=2) + "\n")

    # Evaluate the files as written, through the loader and the adapter.
    from heatmap.demo.clip import create_demo_clip_with_transform
    from heatmap.evaluation.pointing import pointing_game
    from heatmap.models.open_clip.adapter import ClipAdapter

    shipped, tokenizer, preprocess = create_demo_clip_with_transform(args.out)
    metrics = retrieval(shipped, tokenizer, mean, std, seed=HELD_OUT_SEED, count=1000)
    pointing = pointing_game(ClipAdapter(shipped, "demo", tokenizer, preprocess),
                                  make_scenes(100, seed=POINTING_SEED, num_objects=(2, 3)), "chefer-generic")
    metrics.update({"pointing_game_seed": POINTING_SEED, "pointing_game_pairs": pointing.pairs,
                    "pointing_game_chefer_generic": round(pointing.rate, 4)})
    config["metrics"] = metrics
    (args.out / "clip.json").write_text(json.dumps(config, indent=2) + "\n")
    size = (args.out / "clip.safetensors").stat().st_size
    print(json.dumps(metrics), flush=True)
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) in {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
