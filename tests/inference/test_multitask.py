"""Many adapters from one backbone pass (`vqt.load_adapters`, `vqt predict -a ...`): every task's logits equal
that adapter's own forward; mismatched or backbone-changing adapters are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import SPEC
from tests.helpers import make_trained as make
from vqt.backbone.sources import create_backbone
from vqt.checkpoint.trained import load_trained
from vqt.cli.main import main
from vqt.data.transforms import describe_transform
from vqt.errors import AdapterError
from vqt.inference.multitask import load_adapters, parse_adapter_argument, predict_tasks, task_name
from vqt.inference.predict import predict

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("multitask")
    return [
        make(root / "shapes", "vqt", seed=1, num_queries=1),
        make(root / "colours", "vqt", seed=2, classes=5, num_queries=3),
        make(root / "probe", "linear", seed=3, classes=2),
        make(root / "h2t", "head2toe", seed=4, classes=4),
    ]


def test_every_task_equals_its_own_adapter(adapters: list[Path]) -> None:
    model = load_adapters(adapters)
    assert model.task_names == ["shapes", "colours", "probe", "h2t"]
    # One backbone object under every task: nothing is loaded twice.
    assert all(task.backbone is model.backbone for task in model.tasks.values())
    images = torch.randn(4, 3, 32, 32)
    shared = model.logits(images)
    for path in adapters:
        own, _ = load_trained(path)
        expected = own(images)
        assert shared[path.name].shape == expected.shape
        torch.testing.assert_close(shared[path.name], expected, rtol=1e-5, atol=1e-5)
    # A subset, in the order asked, and the tuple forward (what export takes) agree.
    subset = model.logits(images, ["probe", "shapes"])
    assert list(subset) == ["probe", "shapes"] and torch.equal(subset["probe"], shared["probe"])
    assert all(torch.equal(a, b) for a, b in zip(model(images), shared.values(), strict=True))


def test_streamed_query_path_equals_the_tap_path(adapters: list[Path]) -> None:
    """Without Head2Toe the queries run inside the pass (no block's tokens kept): same logits as the tap path."""
    from vqt.methods.vqt import shared_query_outputs, streamed_query_outputs

    model = load_adapters(adapters[:3])  # VQT, VQT, linear
    images = torch.randn(3, 3, 32, 32)
    vqts = [model.tasks["shapes"], model.tasks["colours"]]
    pre_logits, streamed = streamed_query_outputs(vqts, images)
    tapped = model.tap(images)
    torch.testing.assert_close(pre_logits, tapped.pre_logits, rtol=0, atol=0)
    for got, want in zip(streamed, shared_query_outputs(vqts, tapped), strict=True):
        assert len(got) == len(want) == 12
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same ops on the same tokens
    for path, logits in zip(adapters[:3], model(images), strict=True):
        own, _ = load_trained(path)
        torch.testing.assert_close(logits, own(images), rtol=1e-5, atol=1e-5)


def test_one_backbone_pass_serves_all_tasks(adapters: list[Path]) -> None:
    model = load_adapters(adapters)
    calls = []
    handle = model.backbone.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        model.logits(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_names_and_arguments(tmp_path: Path, adapters: list[Path]) -> None:
    assert parse_adapter_argument("cats=runs/a/adapter") == ("cats", "runs/a/adapter")
    assert parse_adapter_argument("runs/a=b/adapter") == (None, "runs/a=b/adapter")
    assert parse_adapter_argument("hf-hub:me/cats") == (None, "hf-hub:me/cats")
    assert task_name("hf-hub:me/cats@v1") == "cats"
    assert task_name(tmp_path / "run7" / "adapter") == "run7"
    model = load_adapters({"a": adapters[0], "b": adapters[0]})  # the same adapter twice, under two names
    assert model.task_names == ["a", "b"]
    with pytest.raises(AdapterError, match="two adapters are named 'shapes'"):
        load_adapters([adapters[0], adapters[0]])
    with pytest.raises(AdapterError, match="unknown task 'nope'"):
        model.logits(torch.randn(1, 3, 32, 32), ["nope"])
    with pytest.raises(AdapterError, match="no adapters"):
        load_adapters([])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(spec="deit_tiny_patch16_224@random"), "backbone"),
        (dict(img_size=48), "image size"),
        (dict(transform=describe_transform("backbone", create_backbone(SPEC, img_size=32), img_size=32)),
         "input transform"),
    ],
)
def test_mismatched_adapters_are_refused(tmp_path: Path, adapters: list[Path], change: dict, field: str) -> None:
    other = make(tmp_path / "other", "vqt", seed=5, num_queries=1, **change)
    with pytest.raises(AdapterError, match=rf"adapter {other} differs from {adapters[0]} in its {field}"):
        load_adapters([adapters[0], other])


def test_other_backbone_weights_are_refused(tmp_path: Path, adapters: list[Path]) -> None:
    other = make(tmp_path / "other", "linear", seed=5)
    config_path = other / "trained_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "weights_fingerprint": "0" * 16}))
    with pytest.raises(AdapterError, match="in its backbone weights digest"):
        load_adapters([adapters[0], other])


def test_backbone_changing_methods_are_refused(tmp_path: Path, adapters: list[Path]) -> None:
    lora = make(tmp_path / "lora", "lora", seed=6, rank=2)
    with pytest.raises(AdapterError, match="method 'lora' changes the backbone's tokens"):
        load_adapters([adapters[0], lora])


def test_predict_tasks_and_cli(tmp_path: Path, adapters: list[Path], capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 40), colour).save(images / f"{index}.png")
    results = predict_tasks(adapters[:2], [images], top_k_classes=2, batch_size=2)
    for path in adapters[:2]:  # each task's top-k is that adapter's own `vqt predict`
        own = predict(path, [images], top_k=2)
        assert [r["path"] for r in results] == [o["path"] for o in own]
        for mine, theirs in zip(results, own, strict=True):
            assert [p["index"] for p in mine["tasks"][path.name]] == [p["index"] for p in theirs["predictions"]]
            assert [p["score"] for p in mine["tasks"][path.name]] == pytest.approx(
                [p["score"] for p in theirs["predictions"]], abs=1e-5)
    argv = ["predict", "-a", str(adapters[0]), "-a", f"probe={adapters[2]}", str(images), "--json", "--top-k", "1"]
    assert main(argv) == 0
    output = json.loads(capsys.readouterr().out)
    assert len(output) == 3 and list(output[0]["tasks"]) == ["shapes", "probe"]
    assert output[0]["tasks"]["probe"][0]["class"].startswith("probe-")
    assert main(["predict", "-a", str(adapters[0]), "-a", str(adapters[3]), "--task", "h2t", str(images)]) == 0
    table = capsys.readouterr().out
    assert "h2t" in table and "shapes-" not in table
    # One-line errors, exit code 2.
    assert main(["predict", "-a", str(adapters[0]), "--task", "nope", str(images)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["predict", str(adapters[0])]) == 2
    assert "at least one image" in capsys.readouterr().err
    assert main(["predict", "-a", str(tmp_path / "missing"), str(images)]) == 2
    assert "no adapter at" in capsys.readouterr().err
