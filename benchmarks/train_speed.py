"""Training speed of VQT from a feature store, measured side by side with the alternatives in one run.

Ratios (docs/design.md §1.6, §1.7 and §5; issue 3), per backbone (random weights, random 224 px images):
- store epoch / official-style epoch (queries appended to the sequence with a mask, full autograd through the
  backbone, as andytu28/VQT does it): goal <= 0.01;
- store epoch / online epoch (backbone without autograd, query path with autograd: `VQT.forward`);
- 20-configuration grid epoch / 1-configuration epoch, both on the store: goal <= 2;
- extraction images/s / plain `forward_features` images/s: goal >= 0.9;
- store bytes read per second while training / a plain tensor copy's bytes per second.

The official-style and online epochs are far too slow on CPU to run in full: they are timed on `--probe-images`
images (one batch, after a warm-up batch) and extrapolated linearly to the epoch; the output says so.

    python benchmarks/train_speed.py [--images 256] [--models vit_small_patch16_224 vit_base_patch16_224]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vqt.backbone.sources import create_backbone
from vqt.features import extract_features, open_store
from vqt.methods.vqt import VQT, combine_features
from vqt.training import LR_GRID, WD_GRID, Recipe, grid_configs, seed_init, train_cached, train_grid
from vqt.training.recipe import make_optimizer

RESULTS = Path(__file__).parent / "results" / "train_speed.md"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def official_style_step(model: VQT, images: torch.Tensor, labels: torch.Tensor, optimizer) -> None:
    """One training step the official way: queries concatenated to the tokens, a boolean mask keeps them apart,
    and autograd records the whole backbone (it cannot know the ordinary rows do not depend on the queries)."""
    backbone = model.backbone
    x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))
    outputs = []
    for block, queries in zip(backbone.blocks, model.queries, strict=True):
        n, q = x.shape[1], queries.shape[0]
        allowed = torch.zeros(n + q, n + q, dtype=torch.bool)
        allowed[:, :n] = True  # every row sees the ordinary tokens only
        seq = torch.cat([x, model.query_dropout(queries.unsqueeze(0).expand(x.shape[0], -1, -1))], dim=1)
        seq = block(seq, attn_mask=allowed)
        x, out = seq[:, :n], seq[:, n:]
        outputs.append(out)
    pre_logits = backbone.forward_head(backbone.norm(x), pre_logits=True)
    loss = F.cross_entropy(model.head(combine_features(pre_logits, outputs)), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def online_step(model: VQT, images: torch.Tensor, labels: torch.Tensor, optimizer) -> None:
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def probe_epoch(step, model: VQT, dataset: TensorDataset, probe: int, images_per_epoch: int) -> float:
    """Seconds per epoch, extrapolated from one timed batch of `probe` images (after a 2-image warm-up)."""
    images, labels = dataset.tensors
    optimizer = make_optimizer(model, Recipe(warmup_epochs=0))
    model.train()
    step(model, images[:2], labels[:2], optimizer)
    seconds = timed(lambda: step(model, images[:probe], labels[:probe], optimizer))
    return seconds / probe * images_per_epoch


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a plain in-memory tensor copy (bytes read; as many are written)."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(timed(lambda: target.copy_(source)) for _ in range(repeats))
    return source.numel() * 4 / best


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    torch.manual_seed(0)
    backbone = create_backbone(f"{name}@random")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, 224, 224, generator=generator)
    labels = torch.randint(0, args.classes, (args.images,), generator=generator)
    dataset = TensorDataset(images, labels)
    row: dict = {"model": name, "images": args.images}

    # Plain forward_features vs extraction, same loader, batch and images.
    loader = DataLoader(dataset, batch_size=args.extract_batch, num_workers=args.workers)
    with torch.no_grad():
        backbone.forward_features(images[:2])

        def plain() -> None:
            for batch, _ in loader:
                backbone.forward_features(batch)

        plain_s = timed(plain)
    store_dir = workdir / name
    extract_s = timed(
        lambda: extract_features(
            backbone,
            dataset,
            store_dir,
            backbone_spec=f"{name}@random",
            transform={"synthetic": "randn"},
            dataset_meta={"synthetic": args.images},
            dtype="float16",
            batch_size=args.extract_batch,
            num_workers=args.workers,
            overwrite=True,
            progress=False,
        )
    )
    store = open_store(store_dir)
    row["plain_img_s"] = args.images / plain_s
    row["extract_img_s"] = args.images / extract_s
    row["store_gb"] = store.nbytes_per_image * len(store) / 1e9

    # One epoch on the store (1 configuration), the official recipe's batch; warm-up epoch first.
    recipe = Recipe(epochs=1, warmup_epochs=0, batch_size=128)
    model = seed_init(VQT(backbone, num_classes=args.classes, num_queries=1), 0)
    train_cached(model, store, recipe)
    row["store_epoch_s"] = min(timed(lambda: train_cached(model, store, recipe)) for _ in range(2))
    row["read_bytes_s"] = store.nbytes_per_image * len(store) / row["store_epoch_s"]

    # The 20-configuration grid (official lr x wd grid), one epoch on the store.
    configs = grid_configs(LR_GRID, WD_GRID)
    row["grid_configs"] = len(configs)
    row["grid_epoch_s"] = timed(lambda: train_grid(model, store, configs, recipe))

    # Official-style and online epochs, extrapolated from one probe batch.
    row["official_epoch_s"] = probe_epoch(official_style_step, model, dataset, args.probe_images, args.images)
    row["online_epoch_s"] = probe_epoch(online_step, model, dataset, args.probe_images, args.images)
    shutil.rmtree(store_dir, ignore_errors=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--probe-images", type=int, default=16)
    parser.add_argument("--extract-batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    parser.add_argument(
        "--no-write", action="store_true", help="do not update benchmarks/results/train_speed.md"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vqt-bench-", dir=args.workdir))
    started = time.perf_counter()
    copy_bps = copy_bandwidth()
    rows = []
    try:
        for name in args.models:
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            rows.append(bench_model(name, args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started

    header = (
        "| backbone | store epoch / official-style epoch (goal <= 0.01) | store epoch / online epoch "
        "| 20-config grid / 1-config epoch (goal <= 2) | extraction / forward_features img/s (goal >= 0.9) "
        "| store read bytes/s / tensor copy bytes/s |"
    )
    lines = [header, "|" + " --- |" * 6]
    details = []
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['store_epoch_s'] / r['official_epoch_s']:.5f} "
            f"| {r['store_epoch_s'] / r['online_epoch_s']:.4f} "
            f"| {r['grid_epoch_s'] / r['store_epoch_s']:.2f} "
            f"| {r['extract_img_s'] / r['plain_img_s']:.3f} "
            f"| {r['read_bytes_s'] / copy_bps:.3f} |"
        )
        details.append(
            f"- {r['model']}: {r['images']} images, fp16 store {r['store_gb']:.2f} GB; store epoch "
            f"{r['store_epoch_s']:.2f} s (1 config, Q=1, batch 128); {r['grid_configs']}-config grid epoch "
            f"{r['grid_epoch_s']:.2f} s; official-style epoch {r['official_epoch_s']:.1f} s and online epoch "
            f"{r['online_epoch_s']:.1f} s (both extrapolated from one batch of {args.probe_images} images); "
            f"forward_features {r['plain_img_s']:.2f} img/s, extraction {r['extract_img_s']:.2f} img/s; "
            f"store read {r['read_bytes_s'] / 1e9:.2f} GB/s vs tensor copy {copy_bps / 1e9:.2f} GB/s"
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    machine = (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average at the end {load[0]:.1f}"
    )
    command = "python " + " ".join(["benchmarks/train_speed.py", *sys.argv[1:]])
    report = "\n".join(
        [
            "# Training speed: feature store vs the alternatives",
            "",
            f"- command: `{command}`",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {machine}",
            f"- run time: {total:.0f} s; random weights, random 224 px inputs, {args.classes} classes",
            "",
            *lines,
            "",
            *details,
            "",
            "Official-style and online epochs are extrapolated linearly from one timed batch (full epochs take",
            "minutes on CPU); store and grid epochs are measured in full (store in the page cache).",
            "",
        ]
    )
    print(report)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".md.tmp")
        tmp.write_text(report)
        os.replace(tmp, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
