"""Training speed of VQT from a feature store, measured side by side with the alternatives in one run.

Ratios (docs/design.md §1.6, §1.7 and §5; issues 3 and 10), per backbone (random weights, random 224 px images):
- store epoch / official-style epoch (queries appended to the sequence with a mask, full autograd through the
  backbone, as andytu28/VQT does it): goal <= 0.01;
- store epoch / online epoch (backbone without autograd, query path with autograd: `VQT.forward`);
- 20-configuration grid epoch / 1-configuration epoch, both on the store: goal <= 2;
- extraction images/s / plain `forward_features` images/s: goal >= 0.9;
- store bytes read per second while training / a plain tensor copy's bytes per second;
- the query path's achieved FLOP/s (counted analytically, `query_path_flops`, over a whole store epoch: reads,
  transfers and optimiser steps included) / a plain dense matmul's FLOP/s on the same device and dtype.

The official-style and online epochs are far too slow on CPU to run in full: they are timed on `--probe-images`
images (one batch, after a warm-up batch) and extrapolated linearly to the epoch; the output says so.
`--precision bf16` runs the store trainers, the grid and the probes under bf16 autocast (fp32 master weights);
`--device cuda` runs everything on the GPU, with the store resident there or streamed (`--store-device`).

    python benchmarks/train_speed.py [--images 256] [--models vit_small_patch16_224 vit_base_patch16_224]
        [--device cpu|cuda] [--precision fp32|bf16] [--store-device auto|cpu|cuda]

Each run adds a section at the top of benchmarks/results/train_speed.md (older sections stay below it).
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
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vqt.backbone.query_path import choose_form
from vqt.backbone.sources import create_backbone
from vqt.features import extract_features, open_store
from vqt.methods.vqt import VQT
from vqt.methods.vqt_concat import ConcatVQT
from vqt.precision import autocast, resolve_precision
from vqt.training import LR_GRID, WD_GRID, Recipe, grid_configs, seed_init, train_cached, train_grid
from vqt.training.feeding import resolve_store_device, store_nbytes
from vqt.training.recipe import make_optimizer

RESULTS = Path(__file__).parent / "results" / "train_speed.md"


DEVICE = torch.device("cpu")  # set from --device in main(); `timed` synchronises it


def timed(fn) -> float:
    """Wall seconds of `fn()`, the device's queued work included."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter() - start


COUNTING_RULE = (
    "FLOPs counted analytically per image and layer (2 per multiply-add; norms, softmax, GELU and the L2 "
    "normalisations not counted): the queries' q projection, the attention scores and the weighted sum over the "
    "N stored tokens, the value and output projections and the MLP on the query rows (the absorbed form's "
    "W_k^T q and W_v context products in place of K/V; the recompute form adds K, V of the N stored tokens; "
    "a gated attention's gate), "
    "for R = configurations x Q query rows, plus the head. Training = 2x forward for the query-path matmuls (the "
    "backward computes only the input gradient: backbone weights and stored tokens are frozen, so there is no "
    "weight gradient; the usual 3x would count one), 1x for the K/V of the stored tokens (no gradient at all), "
    "3x for the trainable head."
)


def query_path_flops(backbone: nn.Module, num_queries: int, configs: int, tokens: int, classes: int) -> float:
    """Training FLOPs per image of the query path and head (`COUNTING_RULE`), `configs` configurations of Q
    queries per layer each, with the form `choose_form` picks for their `configs * Q` joint query rows."""
    rows = configs * num_queries
    total = 0.0
    for block in backbone.blocks:
        attn = block.attn
        dim, width, heads = block.norm1.normalized_shape[0], attn.attn_dim, attn.num_heads
        hidden = block.mlp.fc1.out_features
        with_grad = 2 * rows * width * dim  # q projection
        without_grad = 0.0
        if choose_form(block, rows) == "absorbed":
            with_grad += 2 * rows * width * dim  # W_k^T q: queries into token space
            with_grad += 2 * 2 * heads * rows * tokens * dim  # scores and weighted sum, in token space
            with_grad += 2 * rows * width * dim  # W_v applied to the attended tokens
        else:
            without_grad += 2 * tokens * dim * 2 * width  # K and V of the stored tokens
            with_grad += 2 * 2 * rows * tokens * width  # scores and weighted sum
        with_grad += 2 * rows * width * dim + 2 * 2 * rows * dim * hidden  # output projection, MLP
        if getattr(attn, "gate", None) is not None:
            with_grad += 2 * rows * dim * attn.gate.out_features  # a gated attention's gate on the query rows
        total += 2 * with_grad + without_grad
    features = backbone.embed_dim * (1 + len(backbone.blocks) * num_queries)
    return total + 3 * 2 * configs * features * classes


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> tuple[float, int]:
    """FLOP/s of a plain dense square matmul (best of `repeats`) on `device` in `dtype`, and its size."""
    size = 8192 if device.type == "cuda" else 2048
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best, size


def training_step(model: VQT, images: torch.Tensor, labels: torch.Tensor, optimizer) -> None:
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def probe_epoch(model: VQT, dataset: TensorDataset, probe: int, images_per_epoch: int, precision: str) -> float:
    """Seconds per epoch, extrapolated from one timed batch of `probe` images (after a 2-image warm-up)."""
    images, labels = (t.to(DEVICE) for t in dataset.tensors)
    optimizer = make_optimizer(model, Recipe(warmup_epochs=0))
    model.train()

    def run(count: int) -> None:
        with autocast(precision, DEVICE):  # the loss stays fp32 (cross-entropy autocasts to fp32)
            training_step(model, images[:count], labels[:count], optimizer)

    run(2)
    seconds = timed(lambda: run(probe))
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
    backbone = create_backbone(f"{name}@random").to(DEVICE)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, 224, 224, generator=generator)
    labels = torch.randint(0, args.classes, (args.images,), generator=generator)
    dataset = TensorDataset(images, labels)
    row: dict = {"model": name, "images": args.images}

    # Plain forward_features vs extraction, same loader, batch and images.
    loader = DataLoader(dataset, batch_size=args.extract_batch, num_workers=args.workers)
    with torch.no_grad(), autocast(args.precision, DEVICE):
        backbone.forward_features(images[:2].to(DEVICE))

        def plain() -> None:
            for batch, _ in loader:
                backbone.forward_features(batch.to(DEVICE))

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
            device=DEVICE,
            overwrite=True,
            progress=False,
            precision=args.precision,
        )
    )
    store = open_store(store_dir)
    row["plain_img_s"] = args.images / plain_s
    row["extract_img_s"] = args.images / extract_s
    row["store_gb"] = store.nbytes_per_image * len(store) / 1e9
    store_device = resolve_store_device(args.store_device, store_nbytes(store), DEVICE)
    row["store_device"] = store_device
    options = {"precision": args.precision, "store_device": store_device}

    # One epoch on the store (1 configuration), the official recipe's batch; warm-up epoch first.
    recipe = Recipe(epochs=1, warmup_epochs=0, batch_size=128)
    model = seed_init(VQT(backbone, num_classes=args.classes, num_queries=1), 0).to(DEVICE)
    train_cached(model, store, recipe, **options)
    row["store_epoch_s"] = min(timed(lambda: train_cached(model, store, recipe, **options)) for _ in range(2))
    row["read_bytes_s"] = store.nbytes_per_image * len(store) / row["store_epoch_s"]

    # The 20-configuration grid (official lr x wd grid), one epoch on the store (after a warm-up epoch).
    configs = grid_configs(LR_GRID, WD_GRID)
    row["grid_configs"] = len(configs)
    train_grid(model, store, configs, recipe, **options)
    row["grid_epoch_s"] = timed(lambda: train_grid(model, store, configs, recipe, **options))

    # The query path's counted FLOPs over those epochs.
    num_tokens = store.batch([0])[0].tokens[0].shape[1]
    row["tokens"] = num_tokens
    row["flops_1"] = query_path_flops(backbone, 1, 1, num_tokens, args.classes) * args.images
    row["flops_grid"] = query_path_flops(backbone, 1, len(configs), num_tokens, args.classes) * args.images

    # Official-style and online epochs, extrapolated from one probe batch.
    probe = (args.probe_images, args.images, args.precision)
    # The official style is `ConcatVQT` (queries in the sequence under a mask, autograd through the backbone), the
    # implementation protocol_time.py and memory.py time too; same layout and parameters as `model`.
    official = ConcatVQT(backbone, num_classes=args.classes, num_queries=1).to(DEVICE)
    official.load_state_dict(model.state_dict())
    row["official_epoch_s"] = probe_epoch(official, dataset, *probe)
    row["online_epoch_s"] = probe_epoch(model, dataset, *probe)
    shutil.rmtree(store_dir, ignore_errors=True)
    return row


def main() -> int:
    global DEVICE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--probe-images", type=int, default=16)
    parser.add_argument("--extract-batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                        help="query path, grid, probes and extraction: fp32, or bf16 autocast (fp32 master weights)")
    parser.add_argument("--store-device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where training gathers store batches (vqt.training.feeding.resolve_store_device)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    parser.add_argument(
        "--no-write", action="store_true", help="do not update benchmarks/results/train_speed.md"
    )
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    args.precision = resolve_precision(args.precision, DEVICE)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    workdir = Path(tempfile.mkdtemp(prefix="vqt-bench-", dir=args.workdir))
    started = time.perf_counter()
    copy_bps = copy_bandwidth()
    matmul_fps, matmul_size = matmul_flops_per_s(DEVICE, dtype)
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
    flops_header = (
        "| backbone | query-path training GFLOP per image (1 config / 20 configs) | achieved GFLOP/s, 1-config "
        "epoch | achieved GFLOP/s, 20-config grid epoch | dense matmul GFLOP/s | achieved / matmul (1 config "
        "/ grid) |"
    )
    flops_lines = [flops_header, "|" + " --- |" * 6]
    details = []
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['store_epoch_s'] / r['official_epoch_s']:.5f} "
            f"| {r['store_epoch_s'] / r['online_epoch_s']:.4f} "
            f"| {r['grid_epoch_s'] / r['store_epoch_s']:.2f} "
            f"| {r['extract_img_s'] / r['plain_img_s']:.3f} "
            f"| {r['read_bytes_s'] / copy_bps:.3f} |"
        )
        achieved_1 = r["flops_1"] / r["store_epoch_s"]
        achieved_grid = r["flops_grid"] / r["grid_epoch_s"]
        flops_lines.append(
            f"| {r['model']} | {r['flops_1'] / r['images'] / 1e9:.4f} / {r['flops_grid'] / r['images'] / 1e9:.4f} "
            f"| {achieved_1 / 1e9:.2f} | {achieved_grid / 1e9:.2f} | {matmul_fps / 1e9:.1f} "
            f"| {achieved_1 / matmul_fps:.4f} / {achieved_grid / matmul_fps:.4f} |"
        )
        details.append(
            f"- {r['model']}: {r['images']} images, fp16 store {r['store_gb']:.2f} GB (batches from: "
            f"{r['store_device']}); store epoch {r['store_epoch_s']:.2f} s (1 config, Q=1, batch 128); "
            f"{r['grid_configs']}-config grid epoch {r['grid_epoch_s']:.2f} s; official-style epoch "
            f"{r['official_epoch_s']:.1f} s and online epoch {r['online_epoch_s']:.1f} s (both extrapolated from "
            f"one batch of {args.probe_images} images); forward_features {r['plain_img_s']:.2f} img/s, extraction "
            f"{r['extract_img_s']:.2f} img/s; store read {r['read_bytes_s'] / 1e9:.2f} GB/s vs tensor copy "
            f"{copy_bps / 1e9:.2f} GB/s; {r['tokens']} stored tokens per layer"
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    if DEVICE.type == "cuda":
        machine = f"{torch.cuda.get_device_name(DEVICE)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        machine = (
            f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
        )
    command = "python " + " ".join(["benchmarks/train_speed.py", *sys.argv[1:]])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    section = "\n".join(
        [
            f"## {date[:10]}: {DEVICE.type}, {args.precision}",
            "",
            f"- command: `{command}`",
            f"- date: {date}",
            f"- machine: {machine}, load average at the end {load[0]:.1f}",
            f"- run time: {total:.0f} s; random weights, random 224 px inputs, {args.classes} classes; "
            f"precision {args.precision}",
            "",
            *lines,
            "",
            *flops_lines,
            "",
            *details,
            "",
            "Official-style and online epochs are extrapolated linearly from one timed batch (full epochs take",
            "minutes on CPU); store and grid epochs are measured in full (store in the page cache). Achieved",
            "FLOP/s = counted FLOPs of an epoch / its measured time (reads, transfers, optimiser steps included);",
            f"the matmul is {matmul_size}x{matmul_size} @ {matmul_size}x{matmul_size} in {dtype}, best of 5. "
            + COUNTING_RULE,
            "",
        ]
    )
    print(section)
    if not args.no_write:
        write_section(RESULTS, section)
    return 0


def write_section(path: Path, section: str) -> None:
    """Put `section` first under the file's title; older sections stay below it (written atomically)."""
    title = "# Training speed: feature store vs the alternatives\n"
    old = path.read_text() if path.exists() else title
    rest = old[len(title):] if old.startswith(title) else old
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(title + "\n" + section + "\n" + rest.lstrip("\n"))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
