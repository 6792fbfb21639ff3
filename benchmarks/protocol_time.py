"""What a user waits for: the whole VTAB-1k protocol of one task-shaped workload, this project vs official-style.

The workload (random images, random labels): train800, val200 and N test images. The protocol:
1. extract the train800 and val200 feature stores, assemble train800val200 from them (no third backbone pass);
2. the official 20-configuration grid (`LR_GRID` x `WD_GRID`) for E epochs on train800, judged on val200;
3. 5 seeds of the chosen configuration for E epochs on train800val200;
4. the 5 seeds evaluated on the test images (one backbone pass per batch for all 5).
This project runs it end to end with the library's public functions (`extract_features`, `assemble_store`,
`train_grid` with the seeds as grid configurations, `evaluate_streaming`); every phase is timed in full.

The official-style implementation (`vqt.methods.vqt_concat.ConcatVQT`: queries appended to the sequence with an
attention mask, autograd through the whole backbone, as andytu28/VQT does) trains one configuration at a time
from images. Running it in full would take days on a CPU, so a few training batches and a few evaluation batches
are timed after a warm-up and extrapolated linearly to the same work: 20 x E epochs of 800 images plus 5 x E epochs
of 1000, validation every `eval_every` epochs of every grid configuration, and the test set once per seed. The
official trainer (VPT's) also evaluates the test set after every epoch; that is *not* counted, so its projection is
a lower bound. The output says which numbers are extrapolated.

    python benchmarks/protocol_time.py --quick            # ViT-S/16 random weights, E=5, N=200 (a few CPU minutes)
    python benchmarks/protocol_time.py --device cuda      # ViT-B/16, E=100, N=10,000 (meant for a GPU)

The last line reads `protocol speed-up (official-style / vqt): <number>`.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vqt.backbone.sources import create_backbone, weights_fingerprint
from vqt.data.registry import TASKS
from vqt.features import extract_features
from vqt.features.assemble import assemble_store
from vqt.io import write_atomic
from vqt.methods.vqt import VQT
from vqt.methods.vqt_concat import ConcatVQT
from vqt.precision import PRECISIONS, autocast, resolve_precision
from vqt.training import LR_GRID, WD_GRID, GridConfig, Recipe, evaluate_streaming, grid_configs, train_grid
from vqt.training.recipe import make_optimizer

QUICK = {"model": "vit_small_patch16_224", "epochs": 5, "test": 200, "probe_batch": 8, "probe_steps": 2,
         "warmup_steps": 1, "extract_batch": 32}
FULL = {"model": "vit_base_patch16_224", "epochs": 100, "test": 10_000, "probe_batch": 128, "probe_steps": 5,
        "warmup_steps": 2, "extract_batch": 64}
SPEED_UP_LINE = "protocol speed-up (official-style / vqt): "


@dataclass(frozen=True)
class Workload:
    """One VTAB-1k task's protocol: how many images each phase trains on and evaluates."""

    epochs: int
    test_images: int
    train: int = 800
    val: int = 200
    configs: int = len(LR_GRID) * len(WD_GRID)
    seeds: int = 5
    eval_every: int = 10

    @property
    def val_evaluations(self) -> int:
        """Validation passes per grid configuration: every `eval_every` epochs and always after the last."""
        return sum(1 for e in range(self.epochs) if (e + 1) % self.eval_every == 0 or e == self.epochs - 1)

    def official_train_images(self) -> int:
        """Image-steps of one-configuration-at-a-time training: the grid on train800, the seeds on train800val200."""
        return self.configs * self.epochs * self.train + self.seeds * self.epochs * (self.train + self.val)

    def official_eval_images(self, test_images: int | None = None) -> int:
        """Image forwards of its evaluation: val200 for every grid configuration, the test set once per seed."""
        test = self.test_images if test_images is None else test_images
        return self.configs * self.val_evaluations * self.val + self.seeds * test


@dataclass(frozen=True)
class Measured:
    """Measured times (seconds): this project's phases in full, the official-style per-image rates."""

    extract_s: float
    assemble_s: float
    grid_s: float
    seeds_s: float
    test_s: float
    official_train_s_per_image: float
    official_eval_s_per_image: float

    @property
    def fixed_s(self) -> float:
        """The part of this project's time that does not grow with the test set."""
        return self.extract_s + self.assemble_s + self.grid_s + self.seeds_s


def vqt_seconds(measured: Measured, workload: Workload, test_images: int) -> float:
    """This project's protocol time with `test_images` test images (test time scales with the image count)."""
    return measured.fixed_s + measured.test_s / workload.test_images * test_images


def official_seconds(measured: Measured, workload: Workload, test_images: int) -> float:
    """The official-style protocol time, extrapolated from its per-image rates."""
    return (
        measured.official_train_s_per_image * workload.official_train_images()
        + measured.official_eval_s_per_image * workload.official_eval_images(test_images)
    )


def projection(measured: Measured, workload: Workload) -> list[tuple[str, int, float, float]]:
    """(task, test images, vqt s, official-style s) for every VTAB-1k task, with its real test-set size."""
    return [
        (task.name, task.test_images, vqt_seconds(measured, workload, task.test_images),
         official_seconds(measured, workload, task.test_images))
        for task in TASKS.values()
    ]


class RandomImages(Dataset):
    """`count` deterministic random images (and labels), generated on demand so a large test set costs no memory."""

    def __init__(self, count: int, classes: int, img_size: int, offset: int = 0) -> None:
        self.count, self.classes, self.img_size, self.offset = count, classes, img_size, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.offset + index)
        image = torch.randn(3, self.img_size, self.img_size, generator=generator)
        return image, int(torch.randint(0, self.classes, (), generator=generator))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Wall seconds (what a user waits for), this process' CPU seconds (all its threads: on a shared CPU, the work
    done, whatever else the machine runs), and `fn()`."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu, result


def with_precision(fn: Callable[..., Any], precision: str, device: torch.device, notes: list[str]) -> Callable:
    """`fn` with `precision=` when it takes that keyword, else run under `vqt.precision.autocast` (noted)."""
    name = getattr(fn, "__name__", str(fn))
    if "precision" in inspect.signature(fn).parameters:
        return lambda *args, **kwargs: fn(*args, precision=precision, **kwargs)
    if precision != "fp32":
        notes.append(f"`{name}` takes no `precision=`: called under `vqt.precision.autocast({precision!r})`")

    def call(*args: Any, **kwargs: Any) -> Any:
        with autocast(precision, device) if precision != "fp32" else nullcontext():
            return fn(*args, **kwargs)

    return call


def run_vqt_protocol(
    backbone: nn.Module,
    spec: str,
    workload: Workload,
    workdir: Path,
    *,
    classes: int,
    queries: int,
    device: torch.device,
    precision: str,
    extract_batch: int,
    eval_batch: int,
    workers: int = 0,
    store_dtype: str = "float16",
    notes: list[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Measured, Measured, dict[str, Any]]:
    """This project's whole protocol on random images, each phase timed; returns the phase times in wall and in CPU
    seconds (official rates left at 0) and what was chosen."""
    notes = notes if notes is not None else []
    img_size = int(backbone.patch_embed.img_size[0])
    train_set = RandomImages(workload.train, classes, img_size, offset=0)
    val_set = RandomImages(workload.val, classes, img_size, offset=workload.train)
    test_set = RandomImages(workload.test_images, classes, img_size, offset=10_000_000)
    backbone = backbone.to(device).eval()
    extract = with_precision(extract_features, precision, device, notes)
    common = dict(backbone_spec=spec, transform={"synthetic": "randn"}, dtype=store_dtype, batch_size=extract_batch,
                  num_workers=workers, device=device, overwrite=True, progress=False)

    def extract_both() -> tuple:
        fingerprint = weights_fingerprint(backbone)
        train = extract(backbone, train_set, workdir / "train800", dataset_meta={"split": "train800"},
                        fingerprint=fingerprint, **common)
        val = extract(backbone, val_set, workdir / "val200", dataset_meta={"split": "val200"},
                      fingerprint=fingerprint, **common)
        return train, val

    log("extracting train800 and val200 ...")
    extract_s, extract_cpu, (train_store, val_store) = timed(extract_both, device)
    rows = [(0, i) for i in range(len(train_store))] + [(1, i) for i in range(len(val_store))]
    assemble_s, assemble_cpu, trainval_store = timed(
        lambda: assemble_store([train_store, val_store], rows, workdir / "train800val200",
                               {"split": "train800val200"}), device)

    template = VQT(backbone, num_classes=classes, num_queries=queries, query_dropout=0.1).to(device)
    recipe = Recipe(epochs=workload.epochs, warmup_epochs=min(10, workload.epochs // 10),
                    eval_every=workload.eval_every)
    grid = with_precision(train_grid, precision, device, notes)
    configs = grid_configs(LR_GRID, WD_GRID)
    log(f"grid: {len(configs)} configurations x {workload.epochs} epochs ...")
    grid_s, grid_cpu, result = timed(lambda: grid(template, train_store, configs, recipe, val_store=val_store), device)
    best = result.configs[result.best()]
    seeds = [GridConfig(best.lr, best.weight_decay, seed) for seed in range(workload.seeds)]
    log(f"seeds: {len(seeds)} x {workload.epochs} epochs of lr {best.lr:g}, wd {best.weight_decay:g} ...")
    seeds_s, seeds_cpu, final = timed(lambda: grid(template, trainval_store, seeds, recipe), device)
    evaluate = with_precision(evaluate_streaming, precision, device, notes)
    log(f"test: {workload.test_images} images, {len(seeds)} seeds in one pass ...")
    test_s, test_cpu, evaluation = timed(
        lambda: evaluate([final.model(i) for i in range(len(seeds))], test_set, batch_size=eval_batch,
                         num_workers=workers, device=device), device)
    wall = Measured(extract_s, assemble_s, grid_s, seeds_s, test_s, 0.0, 0.0)
    cpu = Measured(extract_cpu, assemble_cpu, grid_cpu, seeds_cpu, test_cpu, 0.0, 0.0)
    return wall, cpu, {"best": best, "test_accuracy": evaluation.mean_accuracy}


def official_rates(
    backbone: nn.Module,
    *,
    classes: int,
    queries: int,
    device: torch.device,
    precision: str,
    batch: int,
    steps: int,
    warmup_steps: int,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Seconds per image of an official-style training step and of an official-style evaluation forward, each
    timed over `steps` batches of `batch` after `warmup_steps` untimed ones: (wall rates, CPU rates)."""
    img_size = int(backbone.patch_embed.img_size[0])
    torch.manual_seed(0)
    model = ConcatVQT(backbone.to(device), num_classes=classes, num_queries=queries, query_dropout=0.1).to(device)
    optimizer = make_optimizer(model, Recipe(warmup_epochs=0))
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)

    def train_step() -> None:
        with autocast(precision, device):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step() -> None:
        with autocast(precision, device):
            model(images).argmax(-1).cpu()

    wall, cpu = [], []
    for mode, step in ((True, train_step), (False, eval_step)):
        model.train(mode)
        for _ in range(warmup_steps):
            step()
        seconds, cpu_seconds, _ = timed(lambda step=step: [step() for _ in range(steps)], device)
        wall.append(seconds / (steps * batch))
        cpu.append(cpu_seconds / (steps * batch))
    return (wall[0], wall[1]), (cpu[0], cpu[1])


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads")


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def report(
    measured: Measured,
    workload: Workload,
    *,
    model: str,
    device: torch.device,
    precision: str,
    queries: int,
    probe: tuple[int, int, int],
    command: str,
    chosen: Mapping[str, Any],
    notes: list[str],
    loads: tuple[str, str],
    img_size: int = 224,
    cpu: Measured | None = None,
) -> str:
    """The Markdown report; its last line is the speed-up line (wall time). With `cpu` (a CPU run) the phases'
    CPU seconds and the speed-up by CPU time are shown too: on a shared machine they depend less on the load."""
    ours = vqt_seconds(measured, workload, workload.test_images)
    official = official_seconds(measured, workload, workload.test_images)
    official_train = measured.official_train_s_per_image * workload.official_train_images()
    official_eval = measured.official_eval_s_per_image * workload.official_eval_images()
    batch, steps, warmup = probe
    rows = projection(measured, workload)
    total_ours, total_official = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines = [
        "# Whole-protocol time: this project vs the official-style implementation",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- device: {device_description(device)}; torch {torch.__version__}; precision {precision}",
        f"- machine load average (1 min) at the start / end: {loads[0]} / {loads[1]}",
        f"- workload: {model} (random weights), random {img_size} px images, {workload.train} train + "
        f"{workload.val} val + {workload.test_images:,} test, Q={queries}, {workload.epochs} epochs, "
        f"{workload.configs}-configuration grid (lr x wd), "
        f"{workload.seeds} seeds, validation every {workload.eval_every} epochs and after the last",
        f"- chosen configuration: lr {chosen['best'].lr:g}, wd {chosen['best'].weight_decay:g} "
        f"(random labels: accuracy {chosen['test_accuracy']:.3f} is chance, only the time matters)",
        "",
        "## This project (measured in full)",
        "",
        "| phase | seconds |" + (" CPU seconds |" if cpu else ""),
        "| --- | --- |" + (" --- |" if cpu else ""),
        *(f"| {label} | {getattr(measured, field):.1f} |" + (f" {getattr(cpu, field):.1f} |" if cpu else "")
          for label, field in (
              (f"extraction: train{workload.train} + val{workload.val} stores", "extract_s"),
              (f"assembly of train{workload.train}val{workload.val} (copy, no backbone)", "assemble_s"),
              (f"grid: {workload.configs} configurations x {workload.epochs} epochs, one pass", "grid_s"),
              (f"seeds: {workload.seeds} x {workload.epochs} epochs on train{workload.train}val{workload.val}, "
               "one pass", "seeds_s"),
              (f"test: {workload.test_images:,} images, {workload.seeds} seeds in one backbone pass", "test_s"),
          )),
        f"| **total** | **{ours:.1f}** |" + (f" **{vqt_seconds(cpu, workload, workload.test_images):.1f}** |"
                                              if cpu else ""),
        "",
        "## Official-style (extrapolated)",
        "",
        f"Timed over {steps} batches of {batch} images after {warmup} warm-up batches, then extrapolated linearly:",
        "",
        "| phase | s/image (measured) | images | seconds (extrapolated) |" + (" CPU s/image |" if cpu else ""),
        "| --- | --- | --- | --- |" + (" --- |" if cpu else ""),
        f"| training steps (queries in the sequence, autograd through the backbone) "
        f"| {measured.official_train_s_per_image:.4f} | {workload.official_train_images():,} | {official_train:.0f} |"
        + (f" {cpu.official_train_s_per_image:.4f} |" if cpu else ""),
        f"| evaluation forwards (val per grid configuration, test per seed) "
        f"| {measured.official_eval_s_per_image:.4f} | {workload.official_eval_images():,} | {official_eval:.0f} |"
        + (f" {cpu.official_eval_s_per_image:.4f} |" if cpu else ""),
        f"| **total** | | | **{official:.0f}** ({hours(official)}) |" + (" |" if cpu else ""),
        "",
        "Not counted for the official style: VPT's trainer also evaluates the test set after every epoch (a lower "
        "bound, then).",
        "",
        f"## Projection to the 19 VTAB-1k tasks (real test-set sizes; this run's rates, E={workload.epochs}, "
        f"Q={queries})",
        "",
        "| task | test images | this project | official-style | ratio |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {name} | {n:,} | {hours(v)} | {hours(o)} | {o / v:.0f} |" for name, n, v, o in rows),
        f"| **all 19** | {sum(r[1] for r in rows):,} | **{hours(total_ours)}** | **{hours(total_official)}** "
        f"| **{total_official / total_ours:.0f}** |",
        "",
        f"19-task protocol on this one device: this project {hours(total_ours)}, official-style "
        f"{hours(total_official)} (per-task Q of the official scripts, 1/10/20, not modelled: all at Q={queries}).",
    ]
    if notes:
        lines += ["", *(f"- note: {note}" for note in dict.fromkeys(notes))]
    if cpu:
        by_cpu = (official_seconds(cpu, workload, workload.test_images)
                  / vqt_seconds(cpu, workload, workload.test_images))
        lines += ["", "protocol speed-up by CPU seconds (this process' work, less sensitive to the load): "
                  f"{by_cpu:.1f}"]
    lines += ["", f"{SPEED_UP_LINE}{official / ours:.1f}"]
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"CPU-sized: {QUICK['model']}, E={QUICK['epochs']}, N={QUICK['test']}")
    parser.add_argument("--model", default=None, help="timm architecture, random weights (default: by size)")
    parser.add_argument("--epochs", type=int, default=None, help="E (default: 5 quick, 100 full)")
    parser.add_argument("--test-images", type=int, default=None, help="N (default: 200 quick, 10,000 full)")
    parser.add_argument("--train-images", type=int, default=800, help="train split (VTAB-1k: 800; smaller only "
                        "for smoke runs)")
    parser.add_argument("--val-images", type=int, default=200, help="val split (VTAB-1k: 200)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1, help="Q per layer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 on a CUDA device that supports it, fp32 elsewhere")
    parser.add_argument("--store-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--extract-batch", type=int, default=None, help="extraction and test batch")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--probe-batch", type=int, default=None, help="official-style timed batch size")
    parser.add_argument("--probe-steps", type=int, default=None, help="official-style timed batches")
    parser.add_argument("--warmup-steps", type=int, default=None, help="official-style untimed batches first")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    defaults = {"model": size["model"], "epochs": size["epochs"], "test_images": size["test"],
                "extract_batch": size["extract_batch"], "probe_batch": size["probe_batch"],
                "probe_steps": size["probe_steps"], "warmup_steps": size["warmup_steps"]}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "test_images", "train_images", "val_images", "classes", "queries", "extract_batch",
                "probe_batch", "probe_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def run(args: argparse.Namespace, backbone: nn.Module | None = None, command: str | None = None) -> str:
    """The whole benchmark; `backbone` replaces the random timm model (tests pass a tiny ViT)."""
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    load_at_start = load_average()
    spec = f"{args.model}@random"
    if backbone is None:
        torch.manual_seed(0)
        backbone = create_backbone(spec)
    workload = Workload(epochs=args.epochs, test_images=args.test_images, train=args.train_images,
                        val=args.val_images)
    notes: list[str] = []
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    workdir = Path(tempfile.mkdtemp(prefix="vqt-protocol-time-", dir=args.workdir))
    try:
        measured, cpu, chosen = run_vqt_protocol(
            backbone, spec, workload, workdir, classes=args.classes, queries=args.queries, device=device,
            precision=precision, extract_batch=args.extract_batch, eval_batch=args.extract_batch,
            workers=args.workers, store_dtype=args.store_dtype, notes=notes, log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"official-style: {args.probe_steps} timed batches of {args.probe_batch} (after {args.warmup_steps}) ...")
    (train_rate, eval_rate), (train_cpu, eval_cpu) = official_rates(
        backbone, classes=args.classes, queries=args.queries, device=device, precision=precision,
        batch=args.probe_batch, steps=args.probe_steps, warmup_steps=args.warmup_steps)
    measured = Measured(**{**measured.__dict__, "official_train_s_per_image": train_rate,
                           "official_eval_s_per_image": eval_rate})
    cpu = Measured(**{**cpu.__dict__, "official_train_s_per_image": train_cpu, "official_eval_s_per_image": eval_cpu})
    loads = (load_at_start, load_average())
    command = command or "python benchmarks/protocol_time.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = report(measured, workload, model=args.model, device=device, precision=precision, queries=args.queries,
                  probe=(args.probe_batch, args.probe_steps, args.warmup_steps), command=command.strip(),
                  chosen=chosen, notes=notes, loads=loads, cpu=cpu if device.type == "cpu" else None,
                  img_size=int(backbone.patch_embed.img_size[0]))
    if args.out is not None:
        write_atomic(args.out, text.encode())
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(run(args), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
