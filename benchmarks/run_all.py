"""Every GPU check and benchmark in one command: the test suite, then each benchmark, one results file per step.

    python benchmarks/run_all.py --device cuda              # on a GPU machine: full sizes
    python benchmarks/run_all.py --device cpu --quick       # smoke check: tiny settings, minutes on a CPU
    python benchmarks/run_all.py --device cuda --dry-run    # print the commands only

Steps: `pytest -m cuda` (gpu_tests), the rest of the suite (other_tests: `-m "not cuda"`; left out with
--quick), benchmarks/memory.py, benchmarks/methods_memory.py (batch 128, ViT-B/16, fp32 and bf16),
benchmarks/train_speed.py, benchmarks/inference.py and benchmarks/protocol_time.py (full size). Each step's
standard output goes to `<results-dir>/<name>_<device>.md` (with --quick: `<name>_<device>_quick.md` in a new
temporary directory unless --results-dir is given, so a smoke run never replaces real results) under a header with
the device name, torch and CUDA versions, date, command, exit status and duration; its standard error (progress)
passes through. A failing step is recorded and the next one runs; a summary table ends the run, and the exit
status is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import platform
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@dataclass(frozen=True)
class Step:
    """One command and the results file its standard output goes to."""

    name: str
    argv: list[str]
    note: str = ""


def shown(argv: Sequence[str]) -> str:
    """The command as a person would type it (`python` for this interpreter's path)."""
    return shlex.join(["python", *argv[1:]] if argv and argv[0] == sys.executable else list(argv))


@dataclass(frozen=True)
class Outcome:
    step: Step
    returncode: int
    seconds: float
    results: Path | None


@functools.cache
def help_text(script: Path) -> str:
    """A benchmark script's `--help` (asked, not copied here: the scripts change). Run in this process (the
    scripts import torch once, here, instead of once per child); `--help` exits before any work."""
    out, argv = io.StringIO(), sys.argv
    try:
        sys.argv = [str(script), "--help"]
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit:
        pass
    finally:
        sys.argv = argv
    return out.getvalue()


def takes(script: Path, option: str) -> bool:
    """Whether a benchmark script accepts `option` (its --help lists it)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text(script)) is not None


def plan(device: str, quick: bool, python: str = sys.executable) -> list[Step]:
    """The commands, in order: full sizes, or tiny settings with `quick`."""
    script = lambda name: [python, f"benchmarks/{name}"]  # noqa: E731  (the steps run in the repository root)
    steps = [Step("gpu_tests", [python, "-m", "pytest", "-m", "cuda", "-rs", "tests"])]
    if not quick:
        steps.append(Step("other_tests", [python, "-m", "pytest", "-m", "not cuda", "tests"]))

    size = ["--models", "vit_small_patch16_224", "--batches", "2"] if quick else []
    steps.append(Step("memory", [*script("memory.py"), "--device", device, *size]))

    methods_memory = BENCH / "methods_memory.py"
    if quick:
        size = ["--backbone", "vit_small_patch16_224@random", "--batch", "2", "--img-size", "64", "--steps", "1",
                "--methods", "linear", "vqt", "vqt-concat"]
    else:
        size = ["--backbone", "vit_base_patch16_224@random", "--batch", "128", "--steps", "2"]
    if takes(methods_memory, "--precision"):
        for precision in ("fp32", "bf16"):
            steps.append(Step(f"methods_memory_{precision}", [*script("methods_memory.py"), "--device", device,
                                                                *size, "--precision", precision]))
    else:
        steps.append(Step("methods_memory", [*script("methods_memory.py"), "--device", device, *size],
                          note="methods_memory.py has no --precision: fp32 only"))

    train_speed = BENCH / "train_speed.py"
    size = (["--models", "vit_small_patch16_224", "--images", "16", "--probe-images", "2", "--extract-batch", "8"]
            if quick else [])
    where, note = ([], "train_speed.py has no --device: it ran on the CPU")
    if takes(train_speed, "--device"):
        where, note = ["--device", device], ""
    keep = ["--no-write"] if takes(train_speed, "--no-write") else []  # its own fixed results file stays as it is
    steps.append(Step("train_speed", [*script("train_speed.py"), *where, *size, *keep], note=note))

    size = ["--models", "vit_small_patch16_224", "--batch", "2", "--repeats", "2"] if quick else []
    steps.append(Step("inference", [*script("inference.py"), "--device", device, *size]))

    size = (["--quick", "--model", "vit_tiny_patch16_224", "--train-images", "16", "--val-images", "8",
             "--epochs", "1", "--test-images", "8", "--probe-batch", "2", "--probe-steps", "1"] if quick
            else ["--workers", "8"])  # the random test images are made on the CPU: in parallel, as a loader would
    steps.append(Step("protocol_time", [*script("protocol_time.py"), "--device", device, *size]))
    return steps


ENVIRONMENT = """
import os, platform, torch
d = torch.device(DEVICE)
if d.type == "cuda":
    name = torch.cuda.get_device_name(d) if torch.cuda.is_available() else "no CUDA device visible"
else:
    name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
print(f"{name}; torch {torch.__version__}; CUDA {torch.version.cuda}")
"""


def environment(device: str) -> str:
    """Device name, torch and CUDA versions. For a CUDA device torch is asked in a child process, so this one never
    holds a CUDA context (device memory) while the benchmarks run."""
    code = ENVIRONMENT.replace("DEVICE", repr(device))
    if torch_device_type(device) != "cuda":
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {})  # noqa: S102 - our own constant
        return out.getvalue().strip()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or f"(could not ask torch: {done.stderr.strip().splitlines()[-1:]})"


def results_path(results_dir: Path, step: Step, device: str, quick: bool) -> Path:
    kind = torch_device_type(device)
    return results_dir / f"{step.name}_{kind}{'_quick' if quick else ''}.md"


def torch_device_type(device: str) -> str:
    return device.split(":", 1)[0]


def write_results(path: Path, step: Step, output: str, returncode: int, seconds: float, env: str) -> None:
    from vqt.io import write_atomic

    header = [
        f"# {step.name}",
        "",
        f"- command: `{shown(step.argv)}`",
        f"- run by: `python benchmarks/run_all.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- device: {env}; host {platform.node()}",
        f"- exit status {returncode}, {seconds:.0f} s",
    ]
    if step.note:
        header.append(f"- note: {step.note}")
    write_atomic(path, ("\n".join(header) + "\n\n" + output.rstrip() + "\n").encode())


def run_steps(
    steps: Sequence[Step], results_dir: Path, device: str, quick: bool, timeout: float | None = None
) -> list[Outcome]:
    """Run every step (past failures), writing each one's results file."""
    env = environment(device)
    outcomes = []
    for index, step in enumerate(steps, start=1):
        print(f"[{index}/{len(steps)}] {step.name}: {shown(step.argv)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(step.argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout)
            output, returncode = done.stdout, done.returncode
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            output += f"\n(stopped after the {timeout:g} s limit)\n"
            returncode = 124
        except OSError as error:
            output, returncode = f"could not start: {error}\n", 127
        seconds = time.perf_counter() - start
        path = results_path(results_dir, step, device, quick)
        write_results(path, step, output, returncode, seconds, env)
        outcomes.append(Outcome(step, returncode, seconds, path))
        print(f"    exit {returncode} after {seconds:.0f} s -> {path}", file=sys.stderr, flush=True)
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> str:
    lines = ["| step | result | seconds | results file |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        result = "ok" if o.returncode == 0 else f"FAILED (exit {o.returncode})"
        where = o.results.relative_to(ROOT) if o.results and o.results.is_relative_to(ROOT) else o.results
        lines.append(f"| {o.step.name} | {result} | {o.seconds:.0f} | {where} |")
    failed = [o.step.name for o in outcomes if o.returncode != 0]
    lines += ["", f"{len(outcomes) - len(failed)} of {len(outcomes)} steps passed"
              + (f"; failed: {', '.join(failed)}" if failed else "")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke check of every step")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and results files, run nothing")
    parser.add_argument("--only", nargs="+", default=None, metavar="STEP", help="run only these steps (names)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: benchmarks/results; with --quick a new temporary directory")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to each step")
    args = parser.parse_args(argv)

    if args.results_dir is None:
        if not args.quick:
            args.results_dir = BENCH / "results"
        elif args.dry_run:
            args.results_dir = Path(tempfile.gettempdir()) / "vqt-run-all-quick-XXXXXXXX"
        else:
            args.results_dir = Path(tempfile.mkdtemp(prefix="vqt-run-all-quick-"))
    steps = plan(args.device, args.quick)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in args.only]
    if args.dry_run:
        for step in steps:
            print(f"{step.name}: {shown(step.argv)}")
            print(f"    -> {results_path(args.results_dir, step, args.device, args.quick)}"
                  + (f" ({step.note})" if step.note else ""))
        return 0
    outcomes = run_steps(steps, args.results_dir, args.device, args.quick, args.timeout)
    print(summary(outcomes))
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
