"""`vqt export`: one graph (backbone + every task's query path and head) that onnxruntime / torch.export run to
within 1e-4 of PyTorch, for any batch size; the sidecar JSON says what each output is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_trained as make
from vqt.cli.main import main
from vqt.errors import AdapterError, VQTError
from vqt.inference.export import export_adapters
from vqt.inference.multitask import load_adapters

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("export")
    return [make(root / "shapes", "vqt", seed=1, num_queries=1),
            make(root / "colours", "vqt", seed=2, classes=5, num_queries=3, variant="weighted"),
            make(root / "probe", "linear", seed=3, classes=2)]


def test_onnx_matches_pytorch_with_onnxruntime(tmp_path: Path, adapters: list[Path]) -> None:
    import onnxruntime

    out = tmp_path / "tasks.onnx"
    report = export_adapters(adapters, out)
    assert report["max_abs_diff"] <= 1e-4 and report["bytes"] == out.stat().st_size
    assert json.loads((tmp_path / "tasks.onnx.json").read_text())["tasks"][1]["name"] == "colours"
    # Run it ourselves, at two batch sizes neither of which the export traced.
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_adapters(adapters)
    for batch in (1, 7):
        images = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            want = model(images)
        assert [o.shape for o in got] == [(batch, 3), (batch, 5), (batch, 2)]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.onnx", "tasks.onnx.json"]  # no temporary left


def test_torch_export_program(tmp_path: Path, adapters: list[Path]) -> None:
    out = tmp_path / "tasks.pt2"
    report = export_adapters(adapters[:2], out, format="torch-export")
    assert report["max_abs_diff"] <= 1e-4
    program = torch.export.load(str(out)).module()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for got, want in zip(program(images), load_adapters(adapters[:2])(images), strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_a_failed_check_writes_nothing(tmp_path: Path, adapters: list[Path]) -> None:
    with pytest.raises(VQTError, match="differs from PyTorch"):
        export_adapters(adapters[:1], tmp_path / "x.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VQTError, match="unknown export format"):
        export_adapters(adapters[:1], tmp_path / "x.onnx", format="tflite")
    with pytest.raises(AdapterError, match="no adapter at"):
        export_adapters([tmp_path / "missing"], tmp_path / "x.onnx")


def test_cli(tmp_path: Path, adapters: list[Path], capsys) -> None:
    assert main(["export", f"a={adapters[0]}", str(adapters[2]), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in report["tasks"]] == ["a", "probe"] and report["max_abs_diff"] <= 1e-4
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "n.onnx")]) == 2
    assert "no adapter at" in capsys.readouterr().err
