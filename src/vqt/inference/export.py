"""Export: one graph with the backbone, every task's query path and head (`vqt export`).

The graph takes normalised images (B, 3, H, W), B dynamic, and returns one logits tensor per task, in the order
of `tasks` in the sidecar JSON (`<file>.json`: task and class names, the input size and normalisation, the
measured difference). Formats:
- "onnx": `torch.onnx.export` (the torch.export-based exporter), one self-contained `.onnx` file (weights inside
  up to 1.5 GiB, beside it in `<file>.data` beyond); checked with onnxruntime on a batch of another size than the
  one traced.
- "torch-export": a `torch.export` program (`.pt2`, `torch.export.load(...).module()`), checked the same way.
The check compares with the PyTorch `MultiTaskModel` and refuses (removing the file) a difference over
`tolerance`; files are written under a temporary name and renamed, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vqt.errors import VQTError
from vqt.inference.multitask import MultiTaskModel, load_adapters
from vqt.inference.settings import EXPORT_FORMATS as FORMATS
from vqt.inference.settings import EXPORT_TOLERANCE as TOLERANCE
from vqt.io import write_atomic

EXTERNAL_DATA_BYTES = 1536 * 2**20  # protobuf's 2 GiB limit, with room for the graph


def _input_size(model: MultiTaskModel) -> tuple[int, int]:
    size = model.configs[model.task_names[0]].get("img_size") or model.backbone.patch_embed.img_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _temporary(path: Path) -> Path:
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    return Path(name)


def _export_onnx(model: MultiTaskModel, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    weights = sum(p.numel() * p.element_size() for p in model.backbone.parameters())
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                output_names=model.task_names, dynamic_shapes=({0: batch},), opset_version=opset,
                                verbose=False)
    program.save(str(path), external_data=weights > EXTERNAL_DATA_BYTES)


def _run_onnx(path: Path, images: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(out) for out in session.run(None, {"images": images.numpy()})]


def _export_program(model: MultiTaskModel, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(path))


def _run_program(path: Path, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(torch.export.load(str(path)).module()(images))


def export_adapters(
    adapters: Sequence[str | Path] | dict[str, str | Path] | MultiTaskModel,
    out: str | Path,
    *,
    format: str = "onnx",
    opset: int = 18,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export adapters sharing one backbone pass to `out`; returns (and writes as `<out>.json`) what was checked:
    {"file", "format", "tasks", "bytes", "max_abs_diff", ...}."""
    if format not in FORMATS:
        raise VQTError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    model = adapters if isinstance(adapters, MultiTaskModel) else load_adapters(adapters)
    model = model.float().eval().cpu()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    height, width = _input_size(model)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, height, width, generator=generator)
    check = torch.randn(3, 3, height, width, generator=generator)  # another batch size than the traced one
    temporary = _temporary(out)
    try:
        if format == "onnx":
            _export_onnx(model, example, temporary, opset)
            exported = _run_onnx(temporary, check)
        else:
            _export_program(model, example, temporary)
            exported = _run_program(temporary, check)
        with torch.no_grad():
            expected = model(check)
        diff = max(float((got - want).abs().max()) for got, want in zip(exported, expected, strict=True))
        if not diff <= tolerance:
            raise VQTError(f"the exported {format} graph differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); "
                           "nothing written")
        os.replace(temporary, out)
        data = temporary.with_name(temporary.name + ".data")
        if data.is_file():
            os.replace(data, out.with_name(out.name + ".data"))
    finally:
        temporary.unlink(missing_ok=True)
        temporary.with_name(temporary.name + ".data").unlink(missing_ok=True)
    first = model.configs[model.task_names[0]]
    extra = out.with_name(out.name + ".data")
    report = {
        "file": str(out),
        "format": format,
        "bytes": out.stat().st_size + (extra.stat().st_size if extra.is_file() else 0),
        "input": {"name": "images", "shape": ["batch", 3, height, width], "transform": first.get("transform")},
        "backbone": first.get("backbone"),
        "tasks": [{"name": name, "output": index, "method": model.configs[name].get("method", "vqt"),
                   "class_names": model.class_names(name)} for index, name in enumerate(model.task_names)],
        "checked_batch": int(check.shape[0]),
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "torch": torch.__version__,
    }
    write_atomic(out.with_name(out.name + ".json"), json.dumps(report, indent=2).encode())
    return report
