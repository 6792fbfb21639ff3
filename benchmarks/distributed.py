"""Distributed `vqt`: extraction images/s and sweep wall time with 1 and N ranks, and the torchrun end-to-end checks.

Everything runs through the command line exactly as a user would (`vqt ...` for one process,
`torchrun --nproc_per_node N --no-python vqt ...` for N ranks) on synthetic built-in tasks (`vqt data synth`):

1. extraction: `vqt extract` of train800 (sharded over the ranks); images/s = images / (wall time - the wall
   time of the same command on 8 images), i.e. without process start, imports and model creation;
2. the sweep: `vqt sweep` (ranks claim different units, docs/distributed.md "The sweep"); wall time, and whether
   results.md equals the 1-process one byte for byte;
3. with --check-kill: a 2-rank sweep whose rank holding a claim is SIGKILLed after the first committed unit
   (torchrun then stops the other rank), rerun with the same command: it must finish and give the 1-process
   results.md.

Configurations on a CPU: one process with every core (`OMP_NUM_THREADS` = cores), one process with one thread, and
N ranks with cores / N threads each (torchrun's own default is 1), so 1 and N ranks use the same cores; the
one-thread process shows what the cores give without OpenMP (whose barriers cost far more than tiny models' maths
when other work shares the cores). On a CUDA machine: one process on one GPU, and N ranks on every GPU.

    python benchmarks/distributed.py --check-kill --out benchmarks/results/distributed_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SWEEP_GRID = ["--lrs", "1.0,0.1", "--wds", "0.001,0", "--seeds", "2", "--epochs", "2", "--warmup-epochs", "1",
              "--batch-size", "8", "--eval-every", "1", "--grid-chunk", "1", "--no-progress"]


def command(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return ["vqt", *args]
    return ["torchrun", "--nproc_per_node", str(ranks), "--no-python", "vqt", *args]


def environment(ranks: int, cores: int) -> dict[str, str]:
    threads = str(max(1, cores // ranks))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run(ranks: int, args: list[str], cores: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(command(ranks, args), env=environment(ranks, cores), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command(ranks, args))}\n{done.stderr[-3000:]}")
    return seconds


def extraction(root: Path, work: Path, ranks: int, cores: int, backbone: str, device: str, images: int) -> dict:
    common = ["extract", "--backbone", backbone, "--data-root", str(root), "--task", "dsprites_ori",
              "--device", device, "--batch-size", "32", "--no-progress", "--overwrite"]
    small = run(ranks, [*common, "--split", "val200", "--out", str(work / f"x{ranks}" / "val200")], cores)
    full = run(ranks, [*common, "--split", "train800", "--out", str(work / f"x{ranks}" / "train800")], cores)
    shutil.rmtree(work / f"x{ranks}")
    return {"ranks": ranks, "wall_s": full, "overhead_s": small, "images_per_s": images / max(1e-9, full - small)}


def median_row(rows: list[dict]) -> dict:
    """Per key, the median over the repeats (and every value, for the record)."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    return {**rows[0], **{k: statistics.median(r[k] for r in rows) for k in keys},
            **{f"{k}_all": [r[k] for r in rows] for k in keys}}


def sweep_args(root: Path, out: Path, device: str, method: str) -> list[str]:
    return ["sweep", "--backbone", "vit_tiny_patch16_224@random", "--img-size", "32", "--data-root", str(root),
            "--tasks", "dsprites_ori,clevr_count", "--method", method, *SWEEP_GRID, "--device", device,
            "--out", str(out)]


def check_kill(root: Path, work: Path, reference: Path, device: str, method: str, cores: int) -> dict:
    """Kill the rank holding a claim after the first committed unit; rerun; compare with the 1-process table."""
    out = work / "killed"
    args = sweep_args(root, out, device, method)
    launcher = subprocess.Popen(command(2, args), env=environment(2, cores), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 600
    while victim is None and time.time() < deadline and launcher.poll() is None:
        if list(out.glob("tasks/*/*/*/result.json")):
            for claim in (out / "claims").rglob("*.claim"):
                try:
                    victim = json.loads(claim.read_text())
                    break
                except (OSError, ValueError):
                    continue
        time.sleep(0.05)
    if victim is None:
        launcher.kill()
        raise SystemExit("--check-kill: no rank held a claim after a committed unit (the run was too fast?)")
    os.kill(int(victim["pid"]), signal.SIGKILL)
    launcher.communicate(timeout=600)
    committed = len(list(out.glob("tasks/*/*/*/result.json")))
    rerun = run(2, args, cores)
    same = (out / "results.md").read_text() == (reference / "results.md").read_text()
    return {"killed_rank": victim["rank"], "launcher_rc": launcher.returncode, "units_committed_before": committed,
            "rerun_s": rerun, "same_results_md": same}


def paired(top: list[float], bottom: list[float]) -> str:
    ratios = [a / b for a, b in zip(top, bottom, strict=True)]
    return f"{statistics.median(ratios):.2f}x (per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=None, help="N (default: 2 on a CPU, every GPU with CUDA)")
    parser.add_argument("--images", type=int, default=256, help="train800 images to extract")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224@random", help="extraction backbone (224 px)")
    parser.add_argument("--method", default="vqt", help="sweep method (vqt: stores; lora etc.: online)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating 1 and N ranks; medians")
    parser.add_argument("--check-kill", action="store_true", help="also kill a rank mid-sweep and rerun")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown result here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    options = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    ranks = options.ranks or (torch.cuda.device_count() if cuda else 2)
    cores = os.cpu_count() or 1
    work = options.keep or Path(tempfile.mkdtemp(prefix="vqt-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        big, tiny = work / "data224", work / "data32"
        for root, size, train in ((big, 224, options.images), (tiny, 32, 16)):
            subprocess.run(["vqt", "data", "synth", "dsprites_ori,clevr_count", "--out", str(root), "--train",
                            str(train), "--val", "8", "--test", "16", "--size", str(size)], check=True,
                           capture_output=True)
        load_before = os.getloadavg()[0]
        # (ranks, cores they share): 1 process with every core, 1 process with 1 thread, N ranks with every core
        configs = [(1, cores), (1, 1), (ranks, cores)] if cores > 1 and not cuda else [(1, cores), (ranks, cores)]
        runs: dict[tuple[int, int], list[dict]] = {k: [] for k in configs}
        sweep_runs: dict[tuple[int, int], list[dict]] = {k: [] for k in configs}
        same = True
        for repeat in range(options.repeats):  # the configurations alternate, order reversed every other repeat
            order = configs if repeat % 2 == 0 else configs[::-1]
            for n, c in order:
                runs[(n, c)].append({**extraction(big, work, n, c, options.backbone, device, options.images),
                                     "threads": max(1, c // n)})
            for n, c in order:
                out = work / f"sweep{n}x{c}-{repeat}"
                sweep_runs[(n, c)].append({"ranks": n, "threads": max(1, c // n),
                                           "wall_s": run(n, sweep_args(tiny, out, device, options.method), c)})
            for n, c in configs[1:]:  # every configuration's table equals the 1-process one
                same = same and (work / f"sweep{n}x{c}-{repeat}" / "results.md").read_text() == (
                    work / f"sweep1x{cores}-{repeat}" / "results.md").read_text()
        rows = [median_row(runs[k]) for k in configs]
        sweeps = [median_row(sweep_runs[k]) for k in configs]
        reference = work / f"sweep1x{cores}-0"
        load_after = os.getloadavg()[0]
        kill = check_kill(tiny, work, reference, device, options.method, cores) if options.check_kill else None
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    where = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda
             else f"CPU, {cores} cores ({platform.processor() or platform.machine()}), shared with other work")
    lines = [
        f"# Distributed vqt: 1 vs {ranks} ranks ({device})", "",
        f"Command: `python benchmarks/distributed.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {where}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (other work shares the cores).",
        "", f"Medians of {options.repeats} runs of each configuration (alternating, the order reversed every other "
        "repeat); every run in brackets. Threads: OMP_NUM_THREADS per process.", "",
        f"## Extraction (`vqt extract`, {options.backbone} at 224 px, {options.images} images, fp16 store)", "",
        "| ranks x threads | wall s | start-up s (8 images) | images/s (without start-up) |", "|---|---|---|---|",
        *[f"| {r['ranks']} x {r['threads']} | {r['wall_s']:.1f} ({fmt(r['wall_s_all'])}) | {r['overhead_s']:.1f} "
          f"({fmt(r['overhead_s_all'])}) | {r['images_per_s']:.1f} ({fmt(r['images_per_s_all'])}) |" for r in rows],
        "", *[f"Speed-up {ranks} ranks / 1 process x {r['threads']} threads (median of the per-repeat ratios): "
              f"{paired(rows[-1]['images_per_s_all'], r['images_per_s_all'])}  " for r in rows[:-1]], "",
        f"## Sweep (`vqt sweep --method {options.method}`, 2 tasks x (4 grid units + 2 seeds), tiny ViT at 32 px)",
        "", "| ranks x threads | wall s |", "|---|---|",
        *[f"| {s['ranks']} x {s['threads']} | {s['wall_s']:.1f} ({fmt(s['wall_s_all'])}) |" for s in sweeps], "",
        *[f"Speed-up {ranks} ranks / 1 process x {s['threads']} threads (median of the per-repeat ratios): "
          f"{paired(s['wall_s_all'], sweeps[-1]['wall_s_all'])}  " for s in sweeps[:-1]],
        f"results.md of every configuration identical to the 1-process one (every repeat): {'yes' if same else 'NO'}",
        "",
    ]
    if kill is not None:
        lines += ["## A rank killed mid-sweep, then the same command again", "",
                  f"Rank {kill['killed_rank']} SIGKILLed while holding a claim (torchrun exit {kill['launcher_rc']}) "
                  f"with {kill['units_committed_before']} of 12 units committed; the rerun took {kill['rerun_s']:.1f}"
                  f" s and its results.md is identical to the 1-process one: "
                  f"{'yes' if kill['same_results_md'] else 'NO'}", ""]
    text = "\n".join(lines)
    print(text)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text)
    if not same or (kill is not None and not kill["same_results_md"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
