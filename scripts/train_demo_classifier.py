"""Train the shipped demo classifier: a small timm ViT on shapes-world scenes.

    python scripts/train_demo_classifier.py [--steps 1000] [--out models/demo]

Multi-label (one logit per shape class, binary cross-entropy): a scene holds
one to three shapes of different classes, so every class present is a
positive. The patches are embedded by a small convolutional stem
(``models/demo/conv_stem.py``), which lets a ViT trained from scratch learn
in minutes of CPU; the blocks, which the explainers read, are timm's own.
Reproducible: fixed seeds, 2 threads, a fixed number of steps. Writes
``classifier.safetensors`` and ``classifier.json`` (architecture, labels,
preprocessing, training settings and held-out metrics, the pointing game of
chefer-generic among them).
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

from heatmap.evaluation import pointing_game
from heatmap.models.demo.conv_stem import ConvStemPatchEmbed
from heatmap.models.demo.shapes_world import SHAPES, make_scenes
from heatmap.models.timm_adapter import TimmAdapter

MODEL_ARGS = {"img_size": 96, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4,
              "mlp_ratio": 4.0, "num_classes": len(SHAPES), "class_token": True, "global_pool": "token"}
PRETRAINED_CFG = {"input_size": [3, 96, 96], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
TRAIN_SEED, HELD_OUT_SEED, POINTING_SEED = 1234, 424242, 777


def to_tensor(scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes -> uint8 images ``[N, 3, 96, 96]`` and multi-hot labels ``[N, C]``."""
    images = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack([s.labels for s in scenes]))


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PRETRAINED_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PRETRAINED_CFG["std"]).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random quarter turn and flip per batch: shapes keep their class."""
    images = torch.rot90(images, int(torch.randint(4, (1,), generator=generator)), dims=(2, 3))
    return images.flip(3) if bool(torch.randint(2, (1,), generator=generator)) else images


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
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--pool", type=int, default=12000, help="training scenes drawn once, then augmented")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "models" / "demo")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.time()
    images, labels = to_tensor(make_scenes(args.pool, seed=TRAIN_SEED))
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
        loss = loss_fn(model(normalize(dihedral(images[index], generator))), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - started:.0f}s", flush=True)
    model.eval()  # BatchNorm in the stem: running statistics from here on
    minutes = (time.time() - started) / 60

    model.pretrained_cfg = dict(PRETRAINED_CFG)
    metrics = {"heldout_seed": HELD_OUT_SEED, "heldout_scenes": 1000,
               **evaluate(model, held_out_images, held_out_labels)}
    pointing = pointing_game(TimmAdapter(model, "demo", list(SHAPES)),
                             make_scenes(100, seed=POINTING_SEED, num_objects=(2, 3)), "chefer-generic")
    metrics.update({"pointing_game_seed": POINTING_SEED, "pointing_game_pairs": pointing.pairs,
                    "pointing_game_chefer_generic": round(pointing.rate, 4)})
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
                     "minutes": round(minutes, 1), "torch": torch.__version__},
        "metrics": metrics,
    }
    (args.out / "classifier.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.out} in {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
