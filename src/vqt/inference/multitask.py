"""Many task adapters, one backbone pass.

VQT never changes the backbone's tokens, so one no-autograd pass of the frozen backbone (`BackboneTap`: X_l of
every block and the pre-logits feature) is all that every VQT, linear-probe and Head2Toe adapter of that backbone
reads: each extra task costs only its query path and head. `load_adapters` loads several saved adapters onto one
backbone and refuses, in one line naming the adapter and the field, any that disagrees with the first on the
backbone, its weights, the image size or the input transform. Adapters whose method changes the backbone (VPT,
LoRA, AdaptFormer, fine-tuning, the VQT+X combinations) cannot share the pass and are refused with that reason:
run them on their own (`vqt predict ADAPTER`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqt.backbone.sources import create_backbone
from vqt.backbone.tap import BackboneTap, TapOutput
from vqt.checkpoint.config import read_config
from vqt.checkpoint.trained import load_trained
from vqt.data.images import open_rgb
from vqt.errors import AdapterError
from vqt.hub import is_hub_id, local_folder, parse_hub_id
from vqt.inference.predict import collect_images, inference_transform
from vqt.methods.linear import LinearProbe
from vqt.methods.registry import get_method
from vqt.methods.vqt import VQT, shared_query_outputs, streamed_query_outputs
from vqt.precision import autocast, resolve_precision, to_master

# What every adapter sharing the pass must agree on with the first (config key, what a user calls it).
SHARED_FIELDS: tuple[tuple[str, str], ...] = (
    ("backbone", "backbone"),
    ("img_size", "image size"),
    ("transform", "input transform"),
    ("architecture", "backbone architecture"),
    ("weights_fingerprint", "backbone weights digest"),
)


def task_name(adapter: str | Path) -> str:
    """The default name of an adapter's task: the folder's name, or the Hub repository's name."""
    if is_hub_id(adapter):
        return parse_hub_id(str(adapter))[0].rsplit("/", 1)[-1]
    path = Path(adapter)
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    return name if name not in ("adapter", "adapter-compressed") else path.resolve().parent.name + (
        "" if name == "adapter" else "-compressed")


def parse_adapter_argument(value: str) -> tuple[str | None, str]:
    """`NAME=PATH` -> (NAME, PATH); a plain PATH (or `hf-hub:...`) -> (None, PATH)."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and not is_hub_id(value):
        return name, path
    return None, value


def _check_shareable(label: str, config: dict[str, Any]) -> None:
    spec = get_method(config.get("method", "vqt"))
    if spec.adapts_features:
        raise AdapterError(f"adapter {label}: method {spec.name!r} changes the backbone's tokens, so it cannot share "
                           "one backbone pass with other tasks; run it on its own (vqt predict ADAPTER)")
    if not spec.store_trainable:
        raise AdapterError(f"adapter {label}: method {spec.name!r} does not read the shared backbone pass")
    if config.get("method") == "head2toe":
        sources = (config.get("method_kwargs") or {}).get("sources")
        if sources is not None and not set(sources) <= {"norm1", "attn"}:
            raise AdapterError(f"adapter {label}: Head2Toe sources {list(sources)} need the residual stream, which "
                               "the shared pass does not keep (only norm1 and attn do)")


def _check_agrees(label: str, config: dict[str, Any], first_label: str, first: dict[str, Any]) -> None:
    def shown(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    for key, what in SHARED_FIELDS:
        if config.get(key) != first.get(key):
            raise AdapterError(f"adapter {label} differs from {first_label} in its {what} ({key}: "
                               f"{shown(config.get(key))} vs {shown(first.get(key))}); adapters sharing one pass "
                               "must agree")


class MultiTaskModel(nn.Module):
    """One frozen backbone and several task adapters that read the same pass; the VQT tasks' queries go through
    each block together (`shared_layer_outputs`), so N tasks cost one query-path call per layer. Without a
    Head2Toe task the query path runs inside the pass, block by block (`streamed_query_outputs`).

    `forward(images)` returns one logits tensor per task, in `task_names` order (a tuple: what `torch.onnx`
    and `torch.export` take); `logits(images)` the same as a {task: logits} dict. Each task's logits equal that
    adapter's own `model(images)` (tests/inference/test_multitask.py).
    """

    def __init__(self, backbone: nn.Module, tasks: dict[str, nn.Module], configs: dict[str, dict[str, Any]],
                 folders: dict[str, Path] | None = None) -> None:
        super().__init__()
        if not tasks:
            raise AdapterError("no adapters given")
        self.tap = BackboneTap(backbone)
        self.tasks = nn.ModuleDict(tasks)
        self.configs = configs
        self.folders = folders or {}  # where each task's adapter was loaded from (model cards)
        self.eval()

    @property
    def task_names(self) -> list[str]:
        """The tasks, in the order `forward` returns their logits."""
        return list(self.tasks.keys())

    @property
    def backbone(self) -> nn.Module:
        """The one frozen timm ViT every task reads."""
        return self.tap.model

    def class_names(self, task: str) -> list[str]:
        """The recorded class names of `task` (their indices as strings when none were recorded)."""
        config = self.configs[task]
        return config.get("class_names") or [str(i) for i in range(config["num_classes"])]

    def forward(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> tuple[torch.Tensor, ...]:
        """One (B, classes) logits tensor per task of `tasks` (default: all, in `task_names` order), one pass."""
        chosen = self.task_names if tasks is None else list(tasks)
        queried = [name for name in chosen if isinstance(self.tasks[name], VQT)]
        models = [self.tasks[name] for name in queried]
        if all(name in queried or isinstance(self.tasks[name], LinearProbe) for name in chosen) and models:
            # Only queries and the pre-logits are read: stream the query path, keep no block's tokens.
            pre_logits, streamed = streamed_query_outputs(models, images)
            tapped = TapOutput(tokens=[], pre_logits=pre_logits)
        else:  # Head2Toe reads every block's tokens: keep them (the tap), then run the queries
            tapped = self.tap(images)
            streamed = shared_query_outputs(models, tapped)
        outputs = dict(zip(queried, streamed, strict=True))
        logits = []
        for name in chosen:
            model = self.tasks[name]
            features = (model.features_from_outputs(tapped, outputs[name]) if name in outputs
                        else model.features_from(tapped))
            logits.append(model.head(features))
        return tuple(logits)

    def logits(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """{task: (B, classes) logits} from one backbone pass; `tasks` a subset (default: all)."""
        chosen = self.task_names if tasks is None else list(tasks)
        unknown = [name for name in chosen if name not in self.tasks]
        if unknown:
            raise AdapterError(f"unknown task {unknown[0]!r}; this model serves {', '.join(self.task_names)}")
        return dict(zip(chosen, self.forward(images, chosen), strict=True))


def load_adapters(
    adapters: Sequence[str | Path] | dict[str, str | Path],
    backbone: nn.Module | None = None,
) -> MultiTaskModel:
    """Load saved VQT / linear / Head2Toe adapters onto one backbone (the first's, unless `backbone` is given).

    `adapters`: folders or `hf-hub:` ids (task names from the folder names, or `NAME=PATH`), or a {name: path}
    dict. Every adapter must agree with the first on the backbone, its weights digest, the image size and the
    input transform; a mismatch, a duplicate name or a method that changes the backbone is an `AdapterError`.
    """
    if isinstance(adapters, dict):
        named = [(str(name), path) for name, path in adapters.items()]
    else:
        named = []
        for value in adapters:
            name, path = parse_adapter_argument(str(value)) if isinstance(value, str) else (None, value)
            named.append((name or task_name(path), path))
    if not named:
        raise AdapterError("no adapters given")
    seen: dict[str, str] = {}
    for name, path in named:
        if name in seen:
            raise AdapterError(f"two adapters are named {name!r} ({seen[name]} and {path}); name them NAME=PATH")
        seen[name] = str(path)
    folders = {name: local_folder(path) for name, path in named}
    configs = {name: read_config(folder) for name, folder in folders.items()}
    first = named[0][0]
    for name, path in named:
        _check_shareable(str(path), configs[name])
        _check_agrees(str(path), configs[name], str(named[0][1]), configs[first])
    if backbone is None:
        backbone = create_backbone(configs[first]["backbone"], img_size=configs[first].get("img_size"))
    tasks = {}
    for name, folder in folders.items():
        model, configs[name] = load_trained(folder, backbone)
        tasks[name] = model
    return MultiTaskModel(backbone, tasks, configs, folders)


def top_k(logits: torch.Tensor, names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of `logits`: the k most probable classes as [{"class", "index", "score"}] (softmax scores)."""
    k = max(1, min(int(k), len(names)))
    scores, indices = to_master(logits).softmax(-1).topk(k, dim=-1)
    return [[{"class": names[i], "index": i, "score": s} for s, i in zip(row_s, row_i, strict=True)]
            for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)]


@torch.no_grad()
def predict_tasks(
    adapters: Sequence[str | Path] | dict[str, str | Path] | MultiTaskModel,
    paths: Sequence[str | Path],
    *,
    tasks: Sequence[str] | None = None,
    top_k_classes: int = 5,
    batch_size: int = 32,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Every task's top-k for each image from one backbone pass per batch:
    [{"path", "tasks": {task: [{"class", "index", "score"}, ...]}}]."""
    model = adapters if isinstance(adapters, MultiTaskModel) else load_adapters(adapters)
    chosen = model.task_names if tasks is None else list(tasks)
    unknown = [name for name in chosen if name not in model.tasks]
    if unknown:
        raise AdapterError(f"unknown task {unknown[0]!r}; loaded: {', '.join(model.task_names)}")
    transform = inference_transform(model.configs[model.task_names[0]])
    files = collect_images(paths)
    device = next(model.backbone.parameters()).device
    precision = resolve_precision(precision, device)
    results = []
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        images = torch.stack([transform(open_rgb(path)) for path in batch]).to(device)
        with autocast(precision, device):
            logits = model.logits(images, chosen)
        ranked = {name: top_k(value, model.class_names(name), top_k_classes) for name, value in logits.items()}
        for row, path in enumerate(batch):
            results.append({"path": str(path), "tasks": {name: ranked[name][row] for name in chosen}})
    return results
