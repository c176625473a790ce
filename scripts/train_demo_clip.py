"""Train the shipped demo CLIP contrastively on shapes-world scenes.

    python scripts/train_demo_clip.py [--out models/demo] [--steps 1000] [--minutes 25]

Each step draws a fresh batch of scenes, pairs every scene with the caption of
ONE of its objects (mostly "a red circle", sometimes "red circle" or
"a photo of a red circle") and minimises open_clip's symmetric InfoNCE loss
with a learnable logit scale. A caption can be true of several images of a
batch (two scenes may both hold a red circle) and an image can match several
captions; those pairs are all treated as positives (a multi-positive target),
not as negatives. The result is evaluated on held-out scenes (another seed)
and written as ``clip.json`` + ``clip.safetensors`` for
``heatmap.models.demo.clip_demo.create_demo_clip``.

Deterministic for a given thread count: fixed seeds, two threads, and the
number of steps (not the clock) decides when training ends; ``--minutes`` is
only a safety stop on a slow machine and is reported when it fires.
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

from heatmap.models.demo.clip_demo import USED_IDS_KEY, USED_ROWS_KEY, create_demo_clip
from heatmap.models.demo.shapes_world import COLORS, SHAPES, make_scene, make_scenes

IMAGE_SIZE = 96
CONTEXT_LENGTH = 16
VOCAB_SIZE = 49408
MODEL_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 128, "layers": 6, "head_width": 32,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": VOCAB_SIZE, "width": 128, "heads": 4,
                 "layers": 2},
    "quick_gelu": False,
}
# Caption forms and how often each is drawn. "{a}" is the article of the
# colour ("a red", "an orange"); the first form is the main one, the one
# shapes_world.SceneObject.caption writes and the evaluation uses.
TEMPLATES = (
    ("{a} {color} {shape}", 0.6),
    ("{color} {shape}", 0.15),
    ("a photo of {a} {color} {shape}", 0.15),
    ("a picture of {a} {color} {shape}", 0.1),
)
HELD_OUT_SEED = 777


def caption(template: str, color: str, shape: str) -> str:
    """One caption of a colour and shape in a template's form."""
    article = "an" if color[0] in "aeiou" else "a"
    return template.format(a=article, color=color, shape=shape)


def all_captions() -> list[str]:
    """Every caption the training can draw: all templates x colours x shapes."""
    return [caption(template, color, shape)
            for template, _ in TEMPLATES for color in COLORS for shape in SHAPES]


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


def to_tensor(images: list, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL images -> normalised float tensor ``[B, 3, H, W]`` (what open_clip.image_transform gives)."""
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
    return (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean[:, None, None]) / std[:, None, None]


def pixel_statistics(seed: int, count: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (in 0..1) of ``count`` scenes."""
    pixels = np.stack([np.asarray(scene.image) for scene in make_scenes(count, seed)]).reshape(-1, 3) / 255.0
    return [round(float(v), 4) for v in pixels.mean(0)], [round(float(v), 4) for v in pixels.std(0)]


KEYS: list[tuple[str, str]] = [(color, shape) for color in COLORS for shape in SHAPES]


def draw_batch(rng: np.random.Generator, batch_size: int, patch_size: int):
    """Fresh scenes, one caption each, which (image, caption) pairs are true, and patch labels.

    The B scene captions are followed by the main-form caption of every
    colour-shape combination (``KEYS``, E of them): the text tower is cheap,
    and each image then learns against all the captions it could be confused
    with, not only the ones its batch happened to draw.

    Args:
        rng: the generator the scenes, captions and flips are drawn from.
        batch_size: B, the number of scenes.
        patch_size: side of the model's patches in pixels.

    Returns:
        images (PIL, ``[B]``); captions (``[B + E]`` strings); positives, bool
        ``[B, B + E]``: ``positives[i, j]`` is True when scene i holds the
        colour and shape that caption j names; and patch labels, long
        ``[B, G]`` (G patches in row-major order): the index into ``KEYS`` of
        the object covering at least half of the patch, or -1.
    """
    probabilities = np.array([p for _, p in TEMPLATES])
    grid = IMAGE_SIZE // patch_size
    images, captions, keys, contents, patch_labels = [], [], [], [], []
    for _ in range(batch_size):
        scene = make_scene(rng, size=IMAGE_SIZE)
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        template = TEMPLATES[int(rng.choice(len(TEMPLATES), p=probabilities))][0]
        # A mirror image keeps every shape's class (the heart is only tilted
        # a little, never upside down), so it is free extra data.
        flip = bool(rng.random() < 0.5)
        images.append(scene.image.transpose(0) if flip else scene.image)  # 0 = FLIP_LEFT_RIGHT
        captions.append(caption(template, obj.color, obj.shape))
        keys.append((obj.color, obj.shape))
        contents.append({(o.color, o.shape) for o in scene.objects})
        labels = np.full((grid, grid), -1, dtype=np.int64)
        for o in scene.objects:
            mask = o.mask[:, ::-1] if flip else o.mask
            coverage = mask.reshape(grid, patch_size, grid, patch_size).mean(axis=(1, 3))
            labels[coverage >= 0.5] = KEYS.index((o.color, o.shape))
        patch_labels.append(labels.reshape(-1))
    captions += [caption(TEMPLATES[0][0], color, shape) for color, shape in KEYS]
    keys += KEYS
    positives = torch.tensor([[key in content for key in keys] for content in contents])
    return images, captions, positives, torch.from_numpy(np.stack(patch_labels))


def patch_caption_loss(patch_emb: torch.Tensor, key_text_emb: torch.Tensor, logit_scale: torch.Tensor,
                       patch_labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of each object patch against the captions of all colour-shape combinations.

    Args:
        patch_emb: ``[B, G, D]``, the patch tokens after ``ln_post`` and ``proj``.
        key_text_emb: ``[E, D]``, unit text embeddings of the ``KEYS`` captions.
        logit_scale: the model's (exponentiated) logit scale.
        patch_labels: long ``[B, G]``, an index into ``KEYS`` or -1 (background,
            left out).

    Returns:
        The mean cross entropy over the object patches of the batch.
    """
    on_object = patch_labels >= 0
    logits = logit_scale * F.normalize(patch_emb[on_object], dim=-1) @ key_text_emb.T
    return F.cross_entropy(logits, patch_labels[on_object])


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


def init_vision_tower(visual: torch.nn.Module) -> None:
    """ViT-style initialisation of the image tower (truncated normal, std 0.02).

    open_clip leaves its vision transformer at PyTorch's defaults (it is
    meant to load pretrained weights); trained from scratch, a small normal
    init makes the blocks start near the identity and learn much faster.
    """
    for module in visual.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.MultiheadAttention):
            torch.nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
            torch.nn.init.zeros_(module.in_proj_bias)
    if visual.positional_embedding.requires_grad:  # a fixed sin-cos table stays as built
        torch.nn.init.trunc_normal_(visual.positional_embedding, std=0.02)
    torch.nn.init.trunc_normal_(visual.class_embedding, std=0.02)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def evaluate(model, tokenizer, mean: torch.Tensor, std: torch.Tensor, seed: int, count: int) -> dict:
    """Retrieval on held-out scenes, with the main caption form ``"a <color> <shape>"``.

    image->text: for every (scene, object) pair, the object's caption must
    score above every caption of a colour-shape combination the scene does not
    hold (the captions of the scene's other objects are also true, so they
    are left out of the ranking). text->image: for every combination present
    in at least one held-out scene, the best-scoring scene must hold it.
    """
    scenes = make_scenes(count, seed, size=IMAGE_SIZE)
    keys = [(color, shape) for color in COLORS for shape in SHAPES]
    texts = tokenizer([caption(TEMPLATES[0][0], color, shape) for color, shape in keys])
    text_emb = model.encode_text(texts, normalize=True)
    image_emb = torch.cat([model.encode_image(to_tensor([s.image for s in scenes[i:i + 256]], mean, std),
                                              normalize=True) for i in range(0, count, 256)])
    similarity = image_emb @ text_emb.T  # [scenes, combinations]
    present = torch.tensor([[key in {(o.color, o.shape) for o in s.objects} for key in keys] for s in scenes])
    hits = pairs = 0
    for index, scene in enumerate(scenes):
        absent_best = similarity[index][~present[index]].max()
        for obj in scene.objects:
            pairs += 1
            hits += int(similarity[index, keys.index((obj.color, obj.shape))] > absent_best)
    best_scene = similarity.argmax(0)
    queried = present.any(0)
    text_hits = present[best_scene, torch.arange(len(keys))][queried]
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
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "demo")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=25.0, help="safety stop; steps decide normally")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-weight", type=float, default=1.0,
                        help="weight of the patch-caption loss (0 = plain CLIP loss only)")
    parser.add_argument("--pos-embed", default="sin_cos_2d", choices=["sin_cos_2d", "learnable"])
    parser.add_argument("--default-init", action="store_true")
    parser.add_argument("--vision-width", type=int, default=MODEL_CONFIG["vision_cfg"]["width"])
    parser.add_argument("--vision-layers", type=int, default=MODEL_CONFIG["vision_cfg"]["layers"])
    parser.add_argument("--eval-scenes", type=int, default=1000)
    args = parser.parse_args()
    if args.seed == HELD_OUT_SEED:
        raise SystemExit(f"--seed {HELD_OUT_SEED} is the held-out evaluation seed; pick another")

    import open_clip
    from open_clip.tokenizer import SimpleTokenizer
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    # A separate seed for the statistics, so they do not depend on --steps.
    mean_list, std_list = pixel_statistics(seed=args.seed + 1)
    mean, std = torch.tensor(mean_list), torch.tensor(std_list)

    vocabulary = CompactVocabulary(SimpleTokenizer(context_length=CONTEXT_LENGTH), all_captions())
    model_config = json.loads(json.dumps(MODEL_CONFIG))
    model_config["vision_cfg"].update(width=args.vision_width, layers=args.vision_layers,
                                      pos_embed_type=args.pos_embed)
    compact_config = json.loads(json.dumps(model_config))
    compact_config["text_cfg"]["vocab_size"] = len(vocabulary.used_ids)
    model = open_clip.CLIP(**compact_config)
    if not args.default_init:
        init_vision_tower(model.visual)
    model.train()

    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)
    print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
          f"for {args.steps} steps of {args.batch_size}; vocabulary {len(vocabulary.used_ids)} tokens")

    # The patch tokens come back (un-projected) next to the pooled embedding;
    # the dense loss needs them. Not saved: the loader builds a fresh model.
    model.visual.output_tokens = True
    patch_size = model_config["vision_cfg"]["patch_size"]
    start = time.monotonic()
    steps_done, running_loss, stopped_early = 0, None, False
    for step in range(args.steps):
        if time.monotonic() - start > args.minutes * 60:
            stopped_early = True
            print(f"stopping at step {step}: --minutes {args.minutes} reached")
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup)
        images, captions, positives, patch_labels = draw_batch(rng, args.batch_size, patch_size)
        image_emb, patch_tokens = model.visual(to_tensor(images, mean, std))
        image_emb = F.normalize(image_emb, dim=-1)
        text_emb = model.encode_text(vocabulary(captions), normalize=True)
        logit_scale = model.logit_scale.exp()
        clip_loss = multi_positive_clip_loss(logit_scale * image_emb @ text_emb.T, positives)
        dense_loss = patch_caption_loss(patch_tokens @ model.visual.proj, text_emb[-len(KEYS):], logit_scale,
                                        patch_labels) if args.dense_weight > 0 else torch.zeros(())
        loss = clip_loss + args.dense_weight * dense_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Small batches of a from-scratch ViT give the odd huge gradient;
        # clipping keeps one of them from undoing the attention learnt so far.
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        optimizer.step()
        with torch.no_grad():
            # CLIP's cap on the temperature, which keeps the loss from
            # sharpening into instability.
            model.logit_scale.clamp_(0, math.log(100))
        steps_done = step + 1
        losses = np.array([clip_loss.item(), dense_loss.item()])
        running_loss = losses if running_loss is None else 0.95 * running_loss + 0.05 * losses
        if step % 25 == 0 or steps_done == args.steps:
            print(f"step {step:5d}  clip loss {running_loss[0]:.4f}  patch loss {running_loss[1]:.4f}  logit scale {logit_scale.item():6.2f}  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.monotonic() - start:7.1f}s", flush=True)
    train_seconds = time.monotonic() - start

    state = {key: value.detach().float().contiguous() for key, value in model.state_dict().items()}
    used_rows = state.pop("token_embedding.weight")
    state[USED_IDS_KEY] = vocabulary.used_ids.clone()
    state[USED_ROWS_KEY] = used_rows
    args.out.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "demo-clip",
        **model_config,
        "preprocess": {"mean": mean_list, "std": std_list, "image_size": IMAGE_SIZE},
        "training": {
            "script": "scripts/train_demo_clip.py",
            "steps": steps_done,
            "stopped_by_minutes": stopped_early,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "clip_grad": args.clip_grad,
            "seed": args.seed,
            "templates": {template: p for template, p in TEMPLATES},
            "loss": "symmetric InfoNCE, learnable logit scale, multi-positive targets",
            "caption_set_in_every_batch": True,
            "dense_weight": args.dense_weight,
            "augmentation": "horizontal flip",
            "final_clip_loss": round(float(running_loss[0]), 4),
            "final_patch_loss": round(float(running_loss[1]), 4),
            "minutes": round(train_seconds / 60, 1),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
    }
    (args.out / "clip.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(args.out / "clip.safetensors"))

    # Evaluate the files as shipped: through the loader, with the full vocabulary.
    shipped, tokenizer, _ = create_demo_clip(args.out)
    config["metrics"] = evaluate(shipped, tokenizer, mean, std, seed=HELD_OUT_SEED, count=args.eval_scenes)
    (args.out / "clip.json").write_text(json.dumps(config, indent=2) + "\n")
    size = (args.out / "clip.safetensors").stat().st_size
    print(f"metrics {json.dumps(config['metrics'])}")
    print(f"wrote {args.out / 'clip.json'} and {args.out / 'clip.safetensors'} ({size / 1e6:.2f} MB) "
          f"after {train_seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
