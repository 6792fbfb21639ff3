"""`vqt extract`: the feature store of one split (per-block tokens and pre-logits), resumable, checked on reuse.

Under `torchrun` the images are split across the ranks, each writing its own rows of the one store
(docs/distributed.md)."""

from __future__ import annotations

import argparse

from vqt.cli.options import Option, add_options, resolve
from vqt.protocol.validation import PRECISION_CHOICES

OPTIONS = (
    Option("--backbone", "vit_base_patch16_224.orig_in21k", "backbone spelling"),
    Option("--data-root", None, "VTAB-1k root: <root>/<task>/<split>.txt list files"),
    Option("--task", None, "task name"),
    Option("--split", "train800val200", "split to extract"),
    Option("--out", None, "store folder (unset: stores/<task>/<split>)"),
    Option("--transform", "backbone", "input pipeline: 'backbone' (its own pretrained config), 'official' "
           "(the official VQT code's: TensorFlow bilinear resize to 224x224 without antialiasing, ImageNet "
           "mean/std) or 'petl' (NOAH and the PETL code bases on the VTAB-1k image lists: PIL bicubic resize to "
           "224x224, ImageNet mean/std)", choices=("backbone", "official", "petl")),
    Option("--img-size", None, "input resolution the backbone is built at (unset: its own)", type=int),
    Option("--dtype", "float16", "stored dtype", choices=("float16", "bfloat16", "float32")),
    Option("--batch-size", 64, "images per backbone pass", type=int),
    Option("--num-workers", 0, "image-decoding worker processes", type=int),
    Option("--device", "auto", "cpu, cuda or auto"),
    Option("--precision", "auto", "compute precision of the backbone pass: bf16 runs it under torch.autocast; "
           "auto: bf16 on a CUDA device that supports it, fp32 elsewhere; recorded in the store and compared on "
           "reuse (a bf16 store is not reused for an fp32 request); independent of --dtype (how values are stored)",
           choices=PRECISION_CHOICES),
    Option("--overwrite", False, "replace a store made for another request", flag_action=True),
    Option("--no-progress", False, "hide the progress bar", flag_action=True),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("extract", help="extract the feature store of a split", description=__doc__)
    add_options(parser, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.rundir import user_errors

    return user_errors(_run)(resolve(args, OPTIONS))


def _run(c: dict) -> int:
    from pathlib import Path

    from vqt.backbone.sources import create_backbone, describe
    from vqt.data.tasks import check_data_root, resolve_task_list
    from vqt.data.transforms import build_transform
    from vqt.errors import VQTError
    from vqt.precision import resolve_precision
    from vqt.protocol.setup import resolve_device
    from vqt.protocol.stores import task_store

    if not c["task"]:
        raise VQTError("no task given (--task)")
    task = resolve_task_list(c["task"], c["data_root"])[0]
    check_data_root(c["data_root"], [task], (c["split"],))
    device = resolve_device(c["device"])
    precision = resolve_precision(c["precision"], device)
    backbone = create_backbone(c["backbone"], img_size=c["img_size"]).to(device)
    transform, description = build_transform(c["transform"], backbone, img_size=describe(backbone)["img_size"])
    out = Path(c["out"]) if c["out"] else Path("stores") / task.name / c["split"]
    store = task_store(backbone, backbone_spec=c["backbone"], data_root=c["data_root"], task=task.name,
                       split=c["split"], transform=transform, transform_description=description,
                       store_dir=out.parent.parent, dtype=c["dtype"], batch_size=int(c["batch_size"]),
                       num_workers=int(c["num_workers"]), progress=not c["no_progress"],
                       overwrite=bool(c["overwrite"]), out=out, overwrite_hint="pass --overwrite to replace it",
                       precision=precision, shard=True)  # under torchrun: every rank extracts its shard
    print(f"{store.path}: {len(store)} images, tokens {tuple(store.tokens.shape)} {store.dtype}, computed in "
          f"{precision}")
    return 0
