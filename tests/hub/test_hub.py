"""Adapters on the Hugging Face Hub, offline: the model card, what a push uploads, and `hf-hub:` loads resolved
by huggingface_hub itself from a cache laid out as its own (HF_HUB_OFFLINE=1), with every refusal of a local load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import filter_repo_objects

from tests.tiny_models import tiny_vit
from vqt.checkpoint.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CARD_NAME
from vqt.cli.main import main
from vqt.errors import AdapterError
from vqt.hub import CARD_MARKER, load_adapter, model_card, parse_hub_id, push_to_hub, save_adapter
from vqt.methods.vqt import VQT

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = "owner/name"
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
CLASSES = ["zero", "one", "two", "three"]


def make_adapter(directory: Path, *, num_queries: int = 2, spec: str = "tiny-test-vit", seed: int = 0,
                 extra: dict | None = None) -> VQT:
    torch.manual_seed(seed)
    model = VQT(tiny_vit("dinov2_ls_reg"), num_classes=4, num_queries=num_queries, variant="weighted")
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.add_(torch.randn_like(parameter))
    save_adapter(model, directory, backbone_spec=spec, class_names=CLASSES, extra=extra)
    return model.eval()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# ---------------------------------------------------------------- a cache laid out as huggingface_hub's own


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hub cache, offline. huggingface_hub reads both variables once, at import, into `constants`:
    set both ways, so `snapshot_download` (which reads `constants` when called) sees them."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def publish(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay `folder`'s files out as the Hub client caches a download: content-addressed blobs, a snapshot folder of
    relative symlinks per commit, and refs/<branch or tag> holding the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def spy(monkeypatch) -> list[dict]:
    """Records every `huggingface_hub.snapshot_download` call (and what it returned), still calling the real one."""
    calls: list[dict] = []
    real = huggingface_hub.snapshot_download

    def recording(repo_id, **kwargs):
        folder = real(repo_id, **kwargs)
        calls.append({"repo_id": repo_id, **kwargs, "returned": Path(folder)})
        return folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    return calls


# ---------------------------------------------------------------- the model card


def test_model_card_says_what_the_adapter_is(tmp_path: Path) -> None:
    unit = tmp_path / "tasks" / "dsprites_ori" / "final" / "seed0"
    model = make_adapter(unit / "adapter", spec="vit_base_patch16_224.orig_in21k",
                         extra={"method": "vqt", "task": "dsprites_ori", "seed": 0, "lr": 0.1, "weight_decay": 0.001})
    (unit / "result.json").write_text(json.dumps({"task": "dsprites_ori", "test_accuracy": 0.8125,
                                                  "compressed_test_accuracy": 0.75}))
    card = model_card(unit / "adapter", REPO)
    meta = front_matter(card)
    assert meta["library_name"] == "visual-query-tuning"  # the distribution; PyPI's `vqt` is another project
    assert {"vqt", "visual-query-tuning", "image-classification"} <= set(meta["tags"])
    assert meta["base_model"] == "timm/vit_base_patch16_224.orig_in21k"  # timm's pretrained config of the spelling
    trainable = sum(p.numel() for p in model.trainable_parameters())
    for text in ("`vit_base_patch16_224.orig_in21k`", "`dsprites_ori`",
                 "| classes | 4: `zero`, `one`, `two`, `three` |",
                 "81.25% on test (from result.json of its run)", "| Q (queries per layer) | 2 per layer (3 layers) |",
                 f"| trainable parameters | {trainable:,} (head 772, layer_weights 6, queries 288) |",
                 "lr 0.1, weight_decay 0.001, seed 0", 'vqt.load_adapter("hf-hub:owner/name")',
                 "vqt predict hf-hub:owner/name", "pip install visual-query-tuning", CARD_MARKER):
        assert text in card, text
    # The compressed model's folder takes the compressed accuracy; a result of another task is not taken.
    shutil.copytree(unit / "adapter", unit / "adapter-compressed")
    assert "75.00% on test" in model_card(unit / "adapter-compressed")
    (unit / "result.json").write_text(json.dumps({"task": "svhn", "test_accuracy": 0.5}))
    assert "| accuracy | not recorded |" in model_card(unit / "adapter")


def test_model_card_accuracy_from_a_train_run_or_the_extras(tmp_path: Path) -> None:
    make_adapter(tmp_path / "one" / "adapter", spec="vit_tiny_patch16_224@random", extra={"task": "clevr_count"})
    (tmp_path / "one" / "summary.json").write_text(json.dumps(
        {"status": "complete", "task": "clevr_count", "eval_split": "val200", "eval_accuracy": 0.5}))
    card = model_card(tmp_path / "one" / "adapter")
    assert "50.00% on val200 (from summary.json of its run)" in card
    assert "base_model" not in front_matter(card)  # random weights: no Hub model to name
    assert "random weights" in card and "hf-hub:OWNER/NAME" in card
    make_adapter(tmp_path / "x", extra={"task": "dtd", "test_accuracy": 0.625})
    assert "62.50% on test (from the adapter's config)" in model_card(tmp_path / "x")


# ---------------------------------------------------------------- push


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch) -> SimpleNamespace:
    """`HfApi.create_repo` / `upload_folder` captured: the upload copies what would be sent into a fake repo."""
    hub = SimpleNamespace(root=tmp_path / "fake-hub", created=[], uploads=[])

    def create_repo(self, repo_id, **kwargs):
        hub.created.append({"repo_id": repo_id, **kwargs})
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, delete_patterns=None, **kwargs):
        hub.uploads.append({"repo_id": repo_id, "folder_path": Path(folder_path), "allow_patterns": allow_patterns,
                            "delete_patterns": delete_patterns, **kwargs})
        target = hub.root / repo_id
        names = [p.name for p in Path(folder_path).iterdir() if p.is_file()]
        for stale in filter_repo_objects([p.name for p in target.glob("*")], allow_patterns=delete_patterns):
            (target / stale).unlink()
        target.mkdir(parents=True, exist_ok=True)
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            shutil.copy2(Path(folder_path) / name, target / name)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return hub


def test_push_uploads_the_adapter_and_its_card(tmp_path: Path, fake_hub, hub_cache: Path, spy) -> None:
    model = make_adapter(tmp_path / "adapter", extra={"task": "dsprites_ori"})
    (tmp_path / "adapter" / "notes.txt").write_text("not part of the adapter")
    url = push_to_hub(tmp_path / "adapter", REPO, private=True)
    assert url == "https://huggingface.co/owner/name"
    assert fake_hub.created == [{"repo_id": REPO, "private": True, "exist_ok": True}]
    [upload] = fake_hub.uploads
    assert upload["repo_id"] == REPO and upload["folder_path"] == tmp_path / "adapter"
    repo = fake_hub.root / REPO
    assert sorted(p.name for p in repo.iterdir()) == sorted([CARD_NAME, ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    assert (tmp_path / "adapter" / CARD_NAME).read_text() == (repo / CARD_NAME).read_text()
    assert 'vqt.load_adapter("hf-hub:owner/name")' in (repo / CARD_NAME).read_text()

    # What was uploaded loads back through huggingface_hub's resolution, identical.
    publish(hub_cache, REPO, repo, COMMIT_A)
    loaded = load_adapter(f"hf-hub:{REPO}", backbone=tiny_vit("dinov2_ls_reg"))
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))
    assert spy[0]["returned"] == hub_cache / "models--owner--name" / "snapshots" / COMMIT_A


def test_save_adapter_push_to_hub_and_a_user_card(tmp_path: Path, fake_hub) -> None:
    make_adapter(tmp_path / "adapter")
    model = VQT(tiny_vit("dinov2_ls_reg"), num_classes=4, num_queries=2, variant="weighted")
    save_adapter(model, tmp_path / "adapter", backbone_spec="tiny-test-vit", push_to_hub=REPO)
    assert len(fake_hub.uploads) == 1 and (fake_hub.root / REPO / ADAPTER_WEIGHTS).is_file()
    # A card without the marker line is the user's: uploaded as it is, never rewritten.
    (tmp_path / "adapter" / CARD_NAME).write_text("# my own card\n")
    push_to_hub(tmp_path / "adapter", REPO)
    assert (fake_hub.root / REPO / CARD_NAME).read_text() == "# my own card\n"


def test_vqt_push_command(tmp_path: Path, fake_hub, capsys, monkeypatch) -> None:
    make_adapter(tmp_path / "adapter")
    assert main(["push", str(tmp_path / "adapter"), "hf-hub:owner/name", "--message", "first"]) == 0
    assert "https://huggingface.co/owner/name" in capsys.readouterr().out
    assert fake_hub.uploads[0]["commit_message"] == "first" and fake_hub.created[0]["private"] is None
    # Not an adapter, a corrupt one, a revision, or a Hub refusal: one line, exit status 2, nothing uploaded.
    assert main(["push", str(tmp_path / "adapter"), "owner/name@dev"]) == 2
    assert "main branch" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), REPO]) == 2
    assert capsys.readouterr().err.strip().startswith("vqt: error: no adapter at")
    (tmp_path / "adapter" / ADAPTER_WEIGHTS).write_bytes(b"garbage")
    assert main(["push", str(tmp_path / "adapter"), REPO]) == 2
    assert "corrupt adapter weights" in capsys.readouterr().err
    make_adapter(tmp_path / "adapter")

    def unauthorized(self, repo_id, **kwargs):
        raise HfHubHTTPError("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create",
                             response=SimpleNamespace(headers={}, request=None, status_code=401))

    monkeypatch.setattr(HfApi, "create_repo", unauthorized)
    assert main(["push", str(tmp_path / "adapter"), REPO]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "401" in error and "hf auth login" in error
    assert len(fake_hub.uploads) == 1


# ---------------------------------------------------------------- load from hf-hub:


def test_hub_revisions_are_resolved_by_huggingface_hub(tmp_path: Path, hub_cache: Path, spy) -> None:
    old = make_adapter(tmp_path / "q1", num_queries=1, seed=1)
    new = make_adapter(tmp_path / "q2", num_queries=2, seed=2)
    publish(hub_cache, REPO, tmp_path / "q1", COMMIT_A, refs=("v1",))
    publish(hub_cache, REPO, tmp_path / "q2", COMMIT_B, refs=("main",))
    images = torch.randn(2, 3, 32, 32)
    backbone = tiny_vit("dinov2_ls_reg")
    assert torch.equal(load_adapter(f"hf-hub:{REPO}", backbone=backbone)(images), new(images))  # refs/main
    assert torch.equal(load_adapter(f"hf-hub:{REPO}@v1", backbone=backbone)(images), old(images))  # a tag
    assert torch.equal(load_adapter(f"hf-hub:{REPO}@{COMMIT_A}", backbone=backbone)(images), old(images))
    snapshots = hub_cache / "models--owner--name" / "snapshots"
    assert [(c["repo_id"], c["revision"], c["returned"]) for c in spy] == [
        (REPO, None, snapshots / COMMIT_B), (REPO, "v1", snapshots / COMMIT_A), (REPO, COMMIT_A, snapshots / COMMIT_A)]
    with pytest.raises(AdapterError, match=r"HF_HUB_OFFLINE is set and owner/name@v2 is not in the local Hugging "
                                           r"Face cache"):
        load_adapter(f"hf-hub:{REPO}@v2", backbone=backbone)


def test_hub_cache_found_from_the_environment_alone(tmp_path: Path) -> None:
    """A fresh interpreter: huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE itself (nothing patched)."""
    cache = tmp_path / "hf-cache"
    make_adapter(tmp_path / "adapter", num_queries=3)
    publish(cache, REPO, tmp_path / "adapter", COMMIT_A)
    code = ("import sys; sys.path.insert(0, '.'); from tests.tiny_models import tiny_vit; import vqt; "
            f"m = vqt.load_adapter('hf-hub:{REPO}', backbone=tiny_vit('dinov2_ls_reg')); print(m.num_queries)")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[3, 3, 3]"


def test_hub_loads_refuse_what_local_loads_refuse(tmp_path: Path, hub_cache: Path) -> None:
    make_adapter(tmp_path / "adapter")
    snapshot = publish(hub_cache, REPO, tmp_path / "adapter", COMMIT_A)
    with pytest.raises(AdapterError, match="num_prefix_tokens: adapter 3 vs backbone 1"):
        load_adapter(f"hf-hub:{REPO}", backbone=tiny_vit("plain_cls"))  # another backbone
    with pytest.raises(AdapterError, match="other weights"):
        load_adapter(f"hf-hub:{REPO}", backbone=tiny_vit("dinov2_ls_reg", seed=1))
    with pytest.raises(AdapterError, match=r"Q=\[2, 2, 2\] per layer, expected \[1, 1, 1\]"):
        load_adapter(f"hf-hub:{REPO}", backbone=tiny_vit("dinov2_ls_reg"), num_queries=1)
    blob = (snapshot / ADAPTER_WEIGHTS).resolve()
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")  # the cached blob damaged
    with pytest.raises(AdapterError, match="corrupt adapter weights .*checksum"):
        load_adapter(f"hf-hub:{REPO}", backbone=tiny_vit("dinov2_ls_reg"))


def test_hub_errors_are_one_line(tmp_path: Path, hub_cache: Path, monkeypatch, capsys) -> None:
    with pytest.raises(AdapterError, match="HF_HUB_OFFLINE is set and owner/missing is not in the local"):
        load_adapter("hf-hub:owner/missing")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / CARD_NAME).write_text("a model, not an adapter")
    publish(hub_cache, "owner/model", tmp_path / "model", COMMIT_A)
    with pytest.raises(AdapterError, match="hf-hub:owner/model is not a vqt adapter"):
        load_adapter("hf-hub:owner/model")
    for bad in ("hf-hub:", "hf-hub:a/b/c", "hf-hub:owner/name@", "hf-hub:bad--name"):
        with pytest.raises(AdapterError, match="bad Hub adapter id"):
            parse_hub_id(bad)
    assert parse_hub_id("hf-hub:owner/name@refs/pr/1") == ("owner/name", "refs/pr/1")
    # Through the command line: one line, exit status 2 (the not-found error is an OSError underneath).
    image = tmp_path / "x.png"
    assert main(["predict", "hf-hub:owner/missing", str(image)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "hf-hub:owner/missing" in error and "local Hugging Face cache" in error

    # Online answers of the Hub, as huggingface_hub raises them.
    response = SimpleNamespace(headers={}, request=None, status_code=404)
    for raised, expected in (
        (RepositoryNotFoundError("404 Repository Not Found", response=response),
         "no repository 'owner/name' on the Hugging Face Hub"),
        (RevisionNotFoundError("404 Revision Not Found", response=response), "has no revision 'dev'"),
        (HfHubHTTPError("500 Server Error", response=SimpleNamespace(headers={}, request=None, status_code=500)),
         "500 Server Error"),
        (ConnectionError("connection refused"), "cannot reach the Hugging Face Hub"),
    ):
        def failing(repo_id, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
        with pytest.raises(AdapterError, match=expected):
            load_adapter("hf-hub:owner/name@dev")


def test_any_method_loads_and_predicts_from_the_hub(tmp_path: Path, hub_cache: Path, capsys) -> None:
    """`load_trained` (what `vqt predict` / `vqt eval` use) takes hf-hub: too, for every method's format."""
    from PIL import Image

    from vqt.backbone.sources import create_backbone
    from vqt.checkpoint.files import TRAINED_CONFIG
    from vqt.checkpoint.trained import save_trained
    from vqt.data.transforms import describe_transform
    from vqt.hub import load_trained
    from vqt.methods.registry import create_method

    spec = "vit_tiny_patch16_224@random"
    torch.manual_seed(0)
    model = create_method("head2toe", create_backbone(spec, img_size=32), 4).eval()
    with torch.no_grad():
        model.head.weight.normal_()
    save_trained(model, tmp_path / "adapter", method="head2toe", kwargs={}, backbone_spec=spec,
                 transform=describe_transform("official", img_size=32), class_names=CLASSES)
    assert (tmp_path / "adapter" / TRAINED_CONFIG).is_file()
    publish(hub_cache, "owner/h2t", tmp_path / "adapter", COMMIT_A)
    loaded, config = load_trained("hf-hub:owner/h2t")
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images)) and config["method"] == "head2toe"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["predict", "hf-hub:owner/h2t", str(tmp_path / "red.png"), "--json", "--top-k", "2"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert [p["class"] in CLASSES for p in result["predictions"]] == [True, True]
    # Its card says how to load this format.
    card = model_card(tmp_path / "adapter", "owner/h2t")
    assert 'vqt.load_trained("hf-hub:owner/h2t")' in card and "head2toe" in front_matter(card)["tags"]
