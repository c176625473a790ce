"""Train the shipped demo classifier: a small timm ViT on shapes-world scenes.

    python scripts/train_demo_classifier.py [--steps 700] [--out models/demo]

Two losses, summed:

- multi-label classification of the class token (one logit per shape,
  binary cross-entropy): a scene holds one to three shapes of different
  classes, so every class present is a positive;
- token labels (Jiang et al., 2021, "All Tokens Matter: Token Labeling for
  Training Better Vision Transformers"): the same head classifies every patch
  token whose centre pixel lies on an object as that object's shape, and
  pushes every logit of a background token down. One label per patch instead
  of one per image is what lets a ViT learn shapes in minutes of CPU.

The patches are embedded by a small convolutional stem
(``demo/conv_stem.py``) for the same reason; the blocks, which the
explainers read, are timm's own, with a LayerNorm before them as CLIP's
towers have (the demo CLIP's image tower starts from this model).
Reproducible: fixed seeds, 2 threads, a fixed number of steps. Writes
``classifier.safetensors`` and ``classifier.json`` (architecture, labels,
preprocessing, training settings and held-out metrics: accuracy and the
pointing game of every method).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from heatmap.demo.conv_stem import ConvStemPatchEmbed
from heatmap.demo.shapes_world import SHAPES, make_scenes
from heatmap.evaluation.pointing import pointing_game
from heatmap.models.timm.adapter import TimmAdapter

MODEL_ARGS = {"img_size": 96, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0,
              "num_classes": len(SHAPES), "class_token": True, "global_pool": "token", "pre_norm": True}
PRETRAINED_CFG = {"input_size": [3, 96, 96], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
TRAIN_SEED, HELD_OUT_SEED, POINTING_SEED = 1234, 424242, 777


def to_tensor(scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes -> uint8 images ``[N, 3, 96, 96]`` and multi-hot labels ``[N, C]``."""
    images = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack([s.labels for s in scenes]))


def patch_labels(scenes, patch: int) -> torch.Tensor:
    """Per patch, the class of the object under the patch's centre pixel, or -1: ``[N, 1, gh, gw]``.

    The centre pixel is where an upsampled map of the patch peaks, so these
    are exactly the pixels the pointing game looks at.
    """
    centre = np.arange(patch // 2, scenes[0].image.size[0], patch)
    labels = np.full((len(scenes), 1, len(centre), len(centre)), -1, dtype=np.int64)
    for n, scene in enumerate(scenes):
        for obj in scene.objects:
            labels[n, 0][obj.mask[np.ix_(centre, centre)]] = SHAPES.index(obj.shape)
    return torch.from_numpy(labels)


def token_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Object patches: cross entropy over the shapes; background patches: every class absent.

    Args:
        logits: ``[N, C, gh, gw]`` from ``patch_logits``.
        labels: long ``[N, gh, gw]``, a class index or -1 for background.
    """
    on_object = labels >= 0
    shapes = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[on_object], labels[on_object])
    background = torch.nn.functional.softplus(logits.permute(0, 2, 3, 1)[~on_object]).mean()
    return shapes + background


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PRETRAINED_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PRETRAINED_CFG["std"]).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def dihedral(generator: torch.Generator, *grids: torch.Tensor) -> list[torch.Tensor]:
    """The same random quarter turn and flip of each ``[N, C, H, W]`` grid: shapes keep their class."""
    turns, flip = int(torch.randint(4, (1,), generator=generator)), bool(torch.randint(2, (1,), generator=generator))
    grids = [torch.rot90(grid, turns, dims=(2, 3)) for grid in grids]
    return [grid.flip(3) for grid in grids] if flip else grids


def patch_logits(model: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own head applied to every patch token: ``[N, C, gh, gw]``."""
    patches = model.head(model.fc_norm(tokens[:, model.num_prefix_tokens:]))
    side = math.isqrt(patches.shape[1])
    return patches.transpose(1, 2).reshape(len(patches), -1, side, side)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    hits = positives[np.argsort(-scores)]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    logits = torch.cat([model(normalize(images[i:i + 250])) for i in range(0, len(images), 250)])
    top1 = logits.argmax(dim=1)
    return {
        "exact_match": round(float(((logits > 0) == labels.bool()).all(dim=1).float().mean()), 4),
        "top1_in_labels": round(float(labels[torch.arange(len(labels)), top1].mean()), 4),
        "mean_ap": round(float(np.mean([average_precision(logits[:, c].numpy(), labels[:, c].numpy())
                                        for c in range(len(SHAPES))])), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--pool", type=int, default=12000, help="training scenes drawn once, then augmented")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--token-weight", type=float, default=1.0, help="weight of the token-label loss")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "models" / "demo")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.time()
    scenes = make_scenes(args.pool, seed=TRAIN_SEED)
    images, labels = to_tensor(scenes)
    patches = patch_labels(scenes, MODEL_ARGS["patch_size"])
    del scenes
    held_out_images, held_out_labels = to_tensor(make_scenes(1000, seed=HELD_OUT_SEED))
    print(f"{args.pool} training scenes drawn in {time.time() - started:.0f}s", flush=True)

    model = VisionTransformer(**MODEL_ARGS, embed_layer=ConvStemPatchEmbed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / args.steps, 1.0)))))
    generator = torch.Generator().manual_seed(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step in range(args.steps):
        index = torch.randint(len(images), (args.batch,), generator=generator)
        batch, batch_patches = dihedral(generator, images[index], patches[index])
        tokens = model.forward_features(normalize(batch))
        class_loss = loss_fn(model.forward_head(tokens), labels[index])
        per_patch = patch_logits(model, tokens)
        token_loss = token_label_loss(per_patch, batch_patches[:, 0])
        loss = class_loss + args.token_weight * token_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            on_object = batch_patches[:, 0] >= 0
            patch_accuracy = (per_patch.argmax(1) == batch_patches[:, 0])[on_object].float().mean()
            print(f"step {step:5d}  class loss {class_loss.item():.4f}  token loss {token_loss.item():.4f}  "
                  f"object-token accuracy {patch_accuracy:.3f}  {time.time() - started:.0f}s", flush=True)
    model.eval()  # BatchNorm in the stem: running statistics from here on
    minutes = (time.time() - started) / 60

    model.pretrained_cfg = dict(PRETRAINED_CFG)
    metrics = {"heldout_seed": HELD_OUT_SEED, "heldout_scenes": 1000,
               **evaluate(model, held_out_images, held_out_labels)}
    adapter = TimmAdapter(model, "demo", list(SHAPES))
    scenes = make_scenes(100, seed=POINTING_SEED, num_objects=(2, 3))
    metrics["pointing_game_seed"] = POINTING_SEED
    for method in ("chefer-generic", "grad-rollout", "rollout"):
        pointing = pointing_game(adapter, scenes, method)
        metrics["pointing_game_pairs"] = pointing.pairs
        metrics[f"pointing_game_{method.replace('-', '_')}"] = round(pointing.rate, 4)
    print(json.dumps(metrics), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out / "classifier.safetensors")
    config = {
        "architecture": "vit_demo_shapes",
        "model_args": MODEL_ARGS,
        "patch_embed": "conv_stem",
        "labels": list(SHAPES),
        "pretrained_cfg": PRETRAINED_CFG,
        "training": {"script": "scripts/train_demo_classifier.py", "train_seed": TRAIN_SEED, "torch_seed": 0,
                     "steps": args.steps, "batch": args.batch, "pool": args.pool, "lr": args.lr,
                     "token_weight": args.token_weight,
                     "minutes": round(minutes, 1), "torch": torch.__version__},
        "metrics": metrics,
    }
    (args.out / "classifier.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.out} in {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
