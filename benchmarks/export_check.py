"""`vqt export` on real-sized backbones: the max logit difference against PyTorch, file size and export time.

Per backbone, `--tasks` VQT adapters (Q = 1, random queries and heads) plus one linear probe are saved and exported
as one graph (`vqt.inference.export.export_adapters`: ONNX checked with onnxruntime, torch.export checked by
running the program), and onnxruntime's images/s is timed beside PyTorch's `MultiTaskModel` on the same batch.

    python benchmarks/export_check.py --out benchmarks/results/export_cpu.md
    python benchmarks/export_check.py --backbones offline:dinov2_s14 vit_base_patch16_224@random
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vqt.backbone.sources import create_backbone
from vqt.checkpoint.trained import save_trained
from vqt.data.transforms import describe_transform
from vqt.inference.export import export_adapters
from vqt.inference.multitask import load_adapters
from vqt.methods.linear import LinearProbe
from vqt.methods.vqt import VQT


def make_adapters(root: Path, spec: str, tasks: int) -> list[Path]:
    backbone = create_backbone(spec)
    transform = describe_transform("backbone", backbone)
    paths = []
    for index in range(tasks + 1):
        torch.manual_seed(index)
        model = VQT(backbone, 10, num_queries=1) if index < tasks else LinearProbe(backbone, 5)
        with torch.no_grad():
            model.head.weight.normal_()
        method = "vqt" if index < tasks else "linear"
        paths.append(save_trained(model, root / f"{method}{index}", method=method,
                                  kwargs={"num_queries": 1} if method == "vqt" else {}, backbone_spec=spec,
                                  transform=transform, class_names=None))
    return paths


def images_per_second(fn, images: torch.Tensor, repeats: int = 3) -> float:
    fn(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["offline:dinov2_s14", "vit_base_patch16_224@random"])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import onnxruntime

    lines = ["| backbone | tasks | format | export s | file MiB | max abs logit diff | images/s runtime | "
             "images/s PyTorch |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for spec in args.backbones:
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_adapters(Path(tmp), spec, args.tasks)
            model = load_adapters(paths)
            size = model.configs[model.task_names[0]]["img_size"]
            size = size if isinstance(size, int) else size[0]
            images = torch.randn(args.batch, 3, size, size)
            with torch.inference_mode():
                torch_speed = images_per_second(model, images)
            for fmt, suffix in (("onnx", ".onnx"), ("torch-export", ".pt2")):
                start = time.perf_counter()
                report = export_adapters(model, Path(tmp) / f"tasks{suffix}", format=fmt)
                seconds = time.perf_counter() - start
                if fmt == "onnx":
                    session = onnxruntime.InferenceSession(report["file"], providers=["CPUExecutionProvider"])
                    speed = images_per_second(lambda x, s=session: s.run(None, {"images": x.numpy()}), images)
                else:
                    program = torch.export.load(report["file"]).module()
                    with torch.inference_mode():
                        speed = images_per_second(program, images)
                lines.append(f"| {spec} | {args.tasks} VQT + 1 linear | {fmt} | {seconds:.0f} | "
                             f"{report['bytes'] / 2**20:.1f} | {report['max_abs_diff']:.1e} | {speed:.1f} | "
                             f"{torch_speed:.1f} |")
                print(lines[-1], flush=True)
    section = "\n".join([
        f"## {datetime.date.today().isoformat()}: {platform.machine()} CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, fp32, batch {args.batch}",
        "", f"Command: `python {' '.join(sys.argv)}`", "", *lines, ""])
    print(section)
    if args.out:
        title = "# `vqt export`: checked against PyTorch (`benchmarks/export_check.py`)\n\n"
        previous = args.out.read_text().removeprefix(title) if args.out.is_file() else ""
        args.out.write_text(title + section + "\n" + previous)


if __name__ == "__main__":
    main()
