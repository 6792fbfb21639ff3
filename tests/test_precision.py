"""`--precision {auto,fp32,bf16}` and `--store-device {auto,cpu,cuda}`: resolution, extraction, stores, runs, CLI.

CPU only (CPU autocast supports bf16), tiny random ViTs, a few seconds each. The tolerances are ~2x what was
measured when they were written; each test says what it measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from tests.helpers import BACKBONE, one_error_line
from tests.tiny_models import tiny_vit
from vqt.cli.main import main
from vqt.errors import StoreError, VQTError
from vqt.features import extract_features, open_store
from vqt.features.extract import request_meta
from vqt.features.store import META_FILE, compared_fields
from vqt.precision import PRECISIONS, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")

STORE_KW = dict(backbone_spec="tiny", transform={"name": "test"}, dataset_meta={"name": "random"}, batch_size=8,
                progress=False)


def images(seed: int = 0, count: int = 16) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 3, 32, 32, generator=generator), torch.arange(count) % 4)


# --- resolution ---------------------------------------------------------------------------------------------


def test_resolve_precision() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # CPU autocast supports bf16
    with pytest.raises(VQTError, match="--precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


def test_parser_choices_match_the_library() -> None:
    """The CLI spells the choices itself (no torch import when building parsers); they must agree."""
    from vqt.protocol.validation import PRECISION_CHOICES, STORE_DEVICE_CHOICES

    assert PRECISION_CHOICES == PRECISIONS
    feeding = pytest.importorskip("vqt.training.feeding")
    assert STORE_DEVICE_CHOICES == feeding.STORE_DEVICES


# --- extraction and stores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg"])
def test_bf16_extraction_close_to_fp32(tmp_path: Path, family: str) -> None:
    """bf16 features stay within 2 % of fp32 (max |bf16 - fp32| / max |fp32| per array; measured 0.5-0.9 % over
    3 seeds of both families) and differ from them (autocast really ran: measured >= 0.5 %)."""
    model = tiny_vit(family)
    fp32 = extract_features(model, images(), tmp_path / "fp32", dtype="float32", precision="fp32", **STORE_KW)
    bf16 = extract_features(model, images(), tmp_path / "bf16", dtype="float32", precision="bf16", **STORE_KW)
    assert fp32.meta["precision"] == "fp32" and bf16.meta["precision"] == "bf16"
    for name in ("tokens", "pre_logits"):
        reference, low = np.asarray(getattr(fp32, name)), np.asarray(getattr(bf16, name))
        relative = float(np.abs(low - reference).max() / np.abs(reference).max())
        assert 1e-4 < relative < 0.02, (name, relative)


def test_bf16_store_refused_for_fp32_request(tmp_path: Path) -> None:
    model = tiny_vit()
    out = tmp_path / "store"
    extract_features(model, images(), out, precision="bf16", **STORE_KW)
    with pytest.raises(StoreError, match="precision: store has 'bf16', requested 'fp32'"):
        extract_features(model, images(), out, precision="fp32", **STORE_KW)
    expect = compared_fields(request_meta(model, count=16, precision="fp32", **{
        k: STORE_KW[k] for k in ("backbone_spec", "transform")}, dataset_meta=STORE_KW["dataset_meta"]))
    with pytest.raises(StoreError, match="precision"):
        open_store(out, expect)
    replaced = extract_features(model, images(), out, precision="fp32", overwrite=True, **STORE_KW)
    assert replaced.meta["precision"] == "fp32"
    assert json.loads((out / META_FILE).read_text())["precision"] == "fp32"


def test_store_without_precision_field_is_fp32(tmp_path: Path) -> None:
    """A store written before the field existed was extracted in fp32: reused as is for fp32, refused for bf16."""
    model = tiny_vit()
    out = tmp_path / "old"
    extract_features(model, images(), out, precision="fp32", **STORE_KW)
    meta = json.loads((out / META_FILE).read_text())
    del meta["precision"]
    (out / META_FILE).write_text(json.dumps(meta))
    chunks: list[int] = []
    store = extract_features(model, images(), out, precision="fp32", on_chunk=chunks.append, **STORE_KW)
    assert chunks == [] and "precision" not in store.meta  # reused, not re-extracted
    with pytest.raises(StoreError, match="precision: store has 'fp32', requested 'bf16'"):
        extract_features(model, images(), out, precision="bf16", **STORE_KW)


# --- runs through the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab")
    assert main(["data", "synth", "dsprites_loc", "--out", str(root), "--train", "32", "--val", "8", "--test", "32",
                 "--size", "32"]) == 0
    return root


def train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_loc", "--epochs", "5",
            "--warmup-epochs", "1", "--batch-size", "8", "--lr", "0.02", "--no-progress", "--out", str(out), *extra]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "train_loss" in line]


def test_train_bf16_matches_fp32(data_root: Path, tmp_path: Path, capsys) -> None:
    """`vqt train --precision bf16` reaches the fp32 run's test accuracy within 2 of the 32 test images (6.25
    points; measured: equal, 12.5 %) and each epoch's training loss within 0.2 % (measured <= 0.09 %)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(train_args(data_root, out, "--precision", precision, "--store-dir", str(tmp_path / "stores"
                                                                                              / precision))) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == precision
        runs[precision] = json.loads((out / "summary.json").read_text())
        assert runs[precision]["precision"] == precision
        meta = json.loads((tmp_path / "stores" / precision / "dsprites_loc" / "train800val200" / META_FILE).read_text())
        assert meta["precision"] == precision
    assert abs(runs["bf16"]["eval_accuracy"] - runs["fp32"]["eval_accuracy"]) <= 2 / 32 + 1e-9
    reference, low = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(reference) == len(low) == 5
    assert low != reference  # bf16 really computed differently
    assert max(abs(a - b) / abs(a) for a, b in zip(reference, low, strict=True)) < 2e-3

    # The fp32 run's stores are refused for a bf16 request (naming the field) unless replaced.
    capsys.readouterr()
    args = train_args(data_root, tmp_path / "other", "--precision", "bf16", "--store-dir",
                      str(tmp_path / "stores" / "fp32"))
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "precision: store has 'fp32', requested 'bf16'" in line and "--overwrite-stores" in line
    assert main([*args, "--overwrite", "--overwrite-stores"]) == 0


def test_extract_precision_then_train_refuses(data_root: Path, tmp_path: Path, capsys) -> None:
    """`vqt extract --precision bf16` writes a bf16 store; `vqt train` with fp32 refuses it by name."""
    store = tmp_path / "stores" / "dsprites_loc" / "train800val200"
    assert main(["extract", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_loc", "--out", str(store),
                 "--precision", "bf16", "--no-progress"]) == 0
    assert "computed in bf16" in capsys.readouterr().out
    assert json.loads((store / META_FILE).read_text())["precision"] == "bf16"
    assert main(train_args(data_root, tmp_path / "run", "--precision", "fp32", "--store-dir",
                           str(tmp_path / "stores"))) == 2
    assert "precision: store has 'bf16', requested 'fp32'" in one_error_line(capsys)


def sweep_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", *BACKBONE, "--data-root", str(data_root), "--tasks", "dsprites_loc", "--lrs", "0.02", "--wds",
            "0", "--seeds", "1", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "8", "--no-progress",
            "--test-store", "--out", str(out), *extra]


def test_sweep_bf16_and_resume_rules(data_root: Path, tmp_path: Path, capsys) -> None:
    """`vqt sweep --precision bf16` end to end; precision is semantic: a finished bf16 run is not an fp32 run; an
    old run (config.yaml without the key) is an fp32 run. Test accuracy within 2 of 32 images of fp32's (measured:
    equal, 15.6 %)."""
    stores = str(tmp_path / "stores")
    means = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(sweep_args(data_root, out, "--precision", precision, "--store-dir", stores + precision)) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == precision
        summary = json.loads((out / "summary.json").read_text())
        assert summary["precision"] == precision
        means[precision] = summary["rows"][0]["test_mean"]
    assert abs(means["bf16"] - means["fp32"]) <= 100 * 2 / 32 + 1e-6  # percent

    capsys.readouterr()
    bf16_run = tmp_path / "bf16"
    assert main(sweep_args(data_root, bf16_run, "--precision", "bf16", "--store-dir", stores + "bf16")) == 0
    assert "already holds this finished sweep run" in capsys.readouterr().out
    assert main(sweep_args(data_root, bf16_run, "--precision", "fp32", "--store-dir", stores + "bf16")) == 2
    assert "differs in: precision" in one_error_line(capsys)
    # auto on this CPU is fp32: the same run as the fp32 one; so is a run recorded before the option existed.
    fp32_run = tmp_path / "fp32"
    config = yaml.safe_load((fp32_run / "config.yaml").read_text())
    del config["precision"], config["store_device"]
    (fp32_run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(sweep_args(data_root, fp32_run, "--store-dir", stores + "fp32")) == 0
    assert "already holds this finished sweep run" in capsys.readouterr().out
    # where the store lives does not change the numbers: not part of what makes the run the same run
    assert main(sweep_args(data_root, fp32_run, "--store-dir", stores + "fp32", "--store-device", "cpu")) == 0


# --- user errors and help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["extract", "train", "sweep", "demo"])
def test_bad_precision_value_exits_2(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([command, "--precision", "fp16"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --precision: invalid choice: 'fp16'" in err and "Traceback" not in err


@pytest.mark.parametrize(("key", "value", "text"), [
    ("precision", "fp16", "--precision must be one of auto, fp32, bf16, got 'fp16'"),
    ("store_device", "gpu", "--store-device must be one of auto, cpu, cuda, got 'gpu'"),
])
def test_bad_value_in_yaml_is_one_line(data_root: Path, tmp_path: Path, capsys, key: str, value: str,
                                       text: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"{key}: {value}\n")
    assert main(train_args(data_root, tmp_path / "run", "--config", str(config))) == 2
    assert text in one_error_line(capsys)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_store_device_cuda_on_cpu_device(data_root: Path, tmp_path: Path, capsys) -> None:
    for command in (train_args(data_root, tmp_path / "t"), sweep_args(data_root, tmp_path / "s")):
        assert main([*command, "--device", "cpu", "--store-device", "cuda"]) == 2
        assert "--store-device cuda needs a CUDA device, but --device cpu is not one" in one_error_line(capsys)
    if not torch.cuda.is_available():
        assert main([*train_args(data_root, tmp_path / "t"), "--store-device", "cuda"]) == 2
        assert "--device auto found none" in one_error_line(capsys)


def test_demo_refuses_store_device_cuda_on_cpu(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--store-device", "cuda"]) == 2
    assert "--store-device cuda needs a CUDA device" in one_error_line(capsys)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("command", "options"), [
    (["extract"], ["--precision"]),
    (["train"], ["--precision", "--store-device"]),
    (["sweep"], ["--precision", "--store-device"]),
    (["demo"], ["--precision", "--store-device"]),
    (["bench", "memory"], ["--precision"]),
])
def test_help_lists_the_options(command: list[str], options: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    for option in options:
        assert option in out, option
    assert "{auto,fp32,bf16}" in out


def test_bench_memory_bf16_row() -> None:
    """The memory measurement runs the step under autocast: bf16 saves fewer activation bytes per image than fp32
    (measured 0.39 vs 0.60 MiB at batch 4), and the weights' bf16 copies autograd keeps are counted apart: equal to a
    plain
    count of the bf16 size of every Linear weight (the patch embedding's input needs no gradient, so its weight's
    copy is not kept)."""
    from torch import nn

    from vqt.backbone.sources import create_backbone
    from vqt.bench.methods import measure_method
    from vqt.methods.registry import create_method

    spec = "vit_tiny_patch16_224@random"
    rows = {p: measure_method("vqt-concat", spec, 4, 32, 0, "cpu", 5, precision=p) for p in ("fp32", "bf16")}
    assert rows["bf16"]["precision"] == "bf16" and rows["fp32"]["weight_casts_mib"] == 0
    assert rows["bf16"]["saved_mib_per_sample"] < rows["fp32"]["saved_mib_per_sample"]
    model = create_method("vqt-concat", create_backbone(spec, img_size=32), 5)
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert rows["bf16"]["weight_casts_mib"] * 2**20 == sum(2 * w.numel() for w in linear)


def test_demo_bf16_then_fp32(tmp_path: Path, monkeypatch, capsys) -> None:
    """`vqt demo --precision bf16` (budget shrunk to seconds, memory measurement faked): extraction, sweeps and the
    summary are bf16; the same folder asked for fp32 is refused in one line naming the field and what to do."""
    import vqt.demo as demo

    tiny = demo.Budget(tasks=("dsprites_loc",), img_size=32, n_train=16, n_val=8, n_test=16, lrs=(0.02,), wds=(0.0,),
                       epochs=2, warmup_epochs=1, seeds=1, queries=1, memory_batch=2)
    monkeypatch.setattr(demo, "REDUCED", tiny)
    monkeypatch.setattr(demo, "measure_memory", lambda methods, backbone, budget, device, precision: {
        m: {"method": m, "precision": precision, "trainable_params": 1, "peak_mib": 1.0, "step_increase_mib": 1.0,
            "saved_mib_per_sample": 0.1} for m in methods})
    out = tmp_path / "demo"
    demo_args = ["demo", "--out", str(out), "--backbone", "vit_tiny_patch16_224@random", "--device", "cpu",
                 "--no-progress"]
    assert main([*demo_args, "--precision", "bf16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    assert json.loads((out / "stores" / "dsprites_loc" / "test" / META_FILE).read_text())["precision"] == "bf16"
    for method in demo.METHODS:
        assert yaml.safe_load((out / "runs" / method / "config.yaml").read_text())["precision"] == "bf16"
    capsys.readouterr()
    assert main([*demo_args, "--precision", "fp32"]) == 2
    line = one_error_line(capsys)
    assert "precision: store has 'bf16', requested 'fp32'" in line and "use another --out" in line
