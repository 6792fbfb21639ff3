"""Helpers several test files share (fixtures live in conftest.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tests.tiny_models import masked_block
from vqt.backbone.sources import create_backbone
from vqt.checkpoint.trained import save_trained
from vqt.cli.main import main
from vqt.data.transforms import describe_transform
from vqt.features import extract_features
from vqt.methods.registry import create_method
from vqt.methods.vqt import VQT
from vqt.training import Recipe

SPEC = "vit_tiny_patch16_224@random"
TRANSFORM = describe_transform("official", img_size=32)


def make_trained(directory: Path, method: str, *, seed: int, classes: int = 3, spec: str = SPEC, transform=TRANSFORM,
         img_size: int = 32, **kwargs) -> Path:
    """A saved adapter of `method` with random (non-trivial) trainable weights."""
    torch.manual_seed(seed)
    model = create_method(method, create_backbone(spec, img_size=img_size), classes, **kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    save_trained(model, directory, method=method, kwargs=kwargs, backbone_spec=spec, transform=transform,
                 class_names=[f"{directory.name}-{i}" for i in range(classes)])
    return directory


BACKBONE = ["--backbone", "vit_tiny_patch16_224@random", "--img-size", "32"]


TINY = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--eval-every", "1", "--no-progress"]


GRID = ["--lrs", "1.0,0.1", "--wds", "0.001,0", "--seeds", "2"]


def synth(root: Path, tasks: str) -> None:
    """`vqt data synth` when that command exists (it is written beside this one), else the generator itself."""
    from vqt.cli.main import COMMAND_MODULES

    if "data" in COMMAND_MODULES:
        rc = main(["data", "synth", tasks, "--out", str(root), "--train", "16", "--val", "8", "--test", "16",
                   "--size", "32"])
        assert rc == 0
        return
    from vqt.data.synth import generate_task

    for task in tasks.split(","):
        generate_task(task, root, n_train=16, n_val=8, n_test=16, size=32)


def sweep_args(data_root: Path, out: Path, tasks: str = "dsprites_ori", *extra: str) -> list[str]:
    return ["sweep", *BACKBONE, "--data-root", str(data_root), "--tasks", tasks, *GRID, *TINY, "--out", str(out),
            *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def one_error_line(capsys) -> str:
    """The single `vqt: error:` line the command printed (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("vqt: error:")]
    assert len(lines) == 1, err
    return lines[0]


STORE_TRANSFORM = {"resize": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
STORE_DATASET = {"list_file": "train800.txt", "entries_sha256": "abc123"}


COUNT = 20


class CountingDataset(Dataset):
    """Synthetic images that count how often they are read (to see what a resume re-reads)."""

    def __init__(self, count: int = COUNT, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 5, (count,), generator=generator)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.images[index], int(self.labels[index])


def extract(backbone, dataset, path: Path, **overrides):
    options = dict(
        backbone_spec="tiny@random",
        transform=STORE_TRANSFORM,
        dataset_meta=STORE_DATASET,
        dtype="float32",
        batch_size=4,
        chunk_size=8,
        progress=False,
    )
    options.update(overrides)
    return extract_features(backbone, dataset, path, **options)


def reference_lr(epoch: int, *, lr: float, batch_size: int, epochs: int, warmup: int) -> float:
    """Peak lr * batch/256, linear warm-up from 0 over `warmup` epochs, then a half cosine to 0."""
    peak = lr * batch_size / 256
    if epoch < warmup:
        return peak * epoch / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def reference_train(
    decayed: list[torch.Tensor],
    head_bias: torch.Tensor,
    loss_of,  # (index tensor) -> scalar loss
    count: int,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    warmup: int,
    order_seed: int,
    constant_lr: bool = False,
    decay_bias: bool = False,
) -> list[torch.Tensor]:
    """Adam (coupled decay, none on the head bias) over shuffled mini-batches; returns the trained tensors."""
    decayed = [nn.Parameter(t.detach().clone()) for t in decayed]
    bias = nn.Parameter(head_bias.detach().clone())
    optimizer = torch.optim.Adam(
        [{"params": decayed, "weight_decay": weight_decay},
         {"params": [bias], "weight_decay": weight_decay if decay_bias else 0.0}],
        lr=0.0,
    )
    generator = torch.Generator().manual_seed(order_seed)
    for epoch in range(epochs):
        epoch_lr = lr * batch_size / 256 if constant_lr else reference_lr(
            epoch, lr=lr, batch_size=batch_size, epochs=epochs, warmup=warmup)
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            loss = loss_of(order[start : start + batch_size], decayed, bias)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return [p.detach() for p in [*decayed, bias]]


def relative_difference(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """Largest |got - expected| of any tensor, relative to that tensor's largest |expected|."""
    return max(
        float((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1e-12))
        for a, b in zip(got, expected, strict=True)
    )


@torch.no_grad()
def reference_tokens(backbone: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """X_l = norm1_l(Z_{l-1}) per block and the pre-logits feature, by running the blocks one by one."""
    x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))
    tokens = []
    for block in backbone.blocks:
        tokens.append(block.norm1(x))
        x = block(x)
    return tokens, backbone.forward_head(backbone.norm(x), pre_logits=True)


def reference_query_outputs(block: nn.Module, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """O_l: the block run on [X_l ; P_l] with the plain masked reference (`masked_block`), whose norm1 is applied
    to the query rows only (the stored X_l are already normalised). Only the query rows are meaningful."""
    n = tokens.shape[1]
    shim = SimpleNamespace(
        norm1=lambda seq: torch.cat([seq[:, :n], block.norm1(seq[:, n:])], dim=1),
        attn=block.attn, ls1=block.ls1, norm2=block.norm2, mlp=block.mlp, ls2=block.ls2,
    )
    allowed = torch.zeros(n + len(queries), n + len(queries), dtype=torch.bool)
    allowed[:, :n] = True  # everybody sees the ordinary tokens; nobody sees a query
    seq = torch.cat([tokens, queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)], dim=1)
    return masked_block(shim, seq, allowed)[:, n:]


def vqt_reference(model: VQT, tokens: list[torch.Tensor], pre_logits: torch.Tensor, labels: torch.Tensor,
                  lr: float, weight_decay: float, recipe: Recipe) -> list[torch.Tensor]:
    """Train a copy of `model`'s queries and head (no dropout) on the given tokens; returns the trained tensors
    in `model.trainable_parameters()` order (queries..., head weight, head bias)."""
    blocks = list(model.backbone.blocks)

    def loss_of(index, decayed, bias):
        *queries, weight = decayed
        pieces = [pre_logits[index]]
        for block, x, q in zip(blocks, tokens, queries, strict=True):
            pieces.append(reference_query_outputs(block, q, x[index]).flatten(1))
        feature = torch.cat([p / p.norm(dim=-1, keepdim=True) for p in pieces], dim=-1)
        return F.cross_entropy(F.linear(feature, weight, bias), labels[index])

    return reference_train([*model.queries, model.head.weight], model.head.bias, loss_of, len(labels),
                           lr=lr, weight_decay=weight_decay, batch_size=recipe.batch_size, epochs=recipe.epochs,
                           warmup=recipe.warmup_epochs, order_seed=recipe.order_seed)


def max_difference(a: VQT, b: VQT) -> float:
    pairs = zip(a.trainable_parameters(), b.trainable_parameters(), strict=True)
    return max(
        float((x - y).detach().abs().max() / y.detach().abs().max().clamp_min(1e-12)) for x, y in pairs
    )
