"""`vqt train`: one task, one configuration, into a run folder (from a feature store, or `--online` from images)."""

from __future__ import annotations

import argparse

from vqt.cli.options import Option, add_options, compress_spec, queries_spec, resolve, shared_options
from vqt.protocol.train_run import TRAIN_DEFAULTS as D

OPTIONS = (
    *shared_options(D, "--backbone"),
    Option("--data-root", D["data_root"], "VTAB-1k root: <root>/<task>/<split>.txt list files"),
    Option("--task", D["task"], "task name (a VTAB-1k name, or any folder under --data-root)"),
    Option("--method", D["method"], "method of the registry (vqt, linear, head2toe, lora, vpt-deep, ...); "
           "methods that change the backbone's features always train online"),
    Option("--queries", D["queries"], "Q per layer (unset: the task's official Q)", type=queries_spec),
    *shared_options(D, "--variant", "--query-dropout", "--tuned-layers"),
    Option("--transform", D["transform"], "input pipeline: 'backbone' (its own pretrained config), "
           "'official' (the official VQT code's: TensorFlow bilinear resize to 224x224 without antialiasing, "
           "ImageNet mean/std) or 'petl' (NOAH and the PETL code bases on the VTAB-1k image lists: PIL bicubic "
           "resize to 224x224, ImageNet mean/std)", choices=("backbone", "official", "petl")),
    *shared_options(D, "--img-size"),
    Option("--lr", D["lr"], "peak lr (unscaled; multiplied by batch/256); unset: chosen from the method's grid on "
           "train800 -> val200 at the last epoch (from a store); online: the middle of the method's grid", type=float),
    Option("--wd", D["wd"], "weight decay (coupled L2, none on the head bias); unset: chosen with an unset --lr, "
           "else 1e-4", type=float),
    *shared_options(D, "--epochs", "--warmup-epochs", "--batch-size"),
    Option("--seed", D["seed"], "initialisation (and query-dropout) seed", type=int),
    Option("--data-seed", D["data_seed"], "training-order seed (unset: --seed)", type=int),
    Option("--eval-every", D["eval_every"], "validation accuracy every this many epochs", type=int),
    Option("--train-split", D["train_split"], "split to train on"),
    Option("--val-split", D["val_split"], "split to validate on each --eval-every epochs (unset: none)"),
    Option("--eval-split", D["eval_split"], "split evaluated at the end"),
    Option("--online", D["online"], "train from images through the backbone instead of a feature store (the "
           "official code's embedding dropout, VQT(embed_dropout=True) in Python, applies only online: a store "
           "holds one fixed backbone pass, so store training cannot apply it and refuses it)",
           flag_action=True),
    Option("--augment", D["augment"], "random resized crop + flip on the training images (needs --online)",
           flag_action=True),
    Option("--compress", D["compress"], "group-lasso feature selection keeping this fraction, evaluated beside "
           "the uncompressed model ('official': 0.7 on Q=1 tasks)", type=compress_spec),
    *shared_options(D, "--group-lasso", "--store-dtype"),
    Option("--out", D["out"], "run folder"),
    Option("--tensorboard", D["tensorboard"], "also write the per-epoch train loss, lr and val accuracy as "
           "TensorBoard runs, one per configuration: DIR/<task>/train/lr<lr>_wd<wd>_seed<s>"
           " (needs pip install 'visual-query-tuning[tensorboard]')"),
    *shared_options(D, "--store-dir"),
    Option("--overwrite", D["overwrite"], "replace a finished run in --out", flag_action=True),
    *shared_options(D, "--overwrite-stores", "--device", "--precision", "--store-device", "--num-workers",
                    "--extract-batch"),
    Option("--eval-batch", D["eval_batch"], "images per backbone pass when evaluating", type=int),
    Option("--no-progress", False, "hide progress bars", flag_action=True),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one configuration on one task and save its adapter",
        description=__doc__ + " Options may come from a YAML file (--config); the command line wins.",
    )
    add_options(parser, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.protocol.train_run import run_train
    from vqt.rundir import FinishedRun, user_errors

    config = resolve(args, OPTIONS)
    config["progress"] = not config.pop("no_progress")
    try:
        summary = user_errors(run_train)(config)
    except FinishedRun as finished:  # a finished run rerun with the same options: its results, not an error
        summary = finished.summary
        print(f"{finished.path} already holds this finished train run (pass --overwrite to redo it):")
    line = f"{summary['task']}: val {_pct(summary.get('val_accuracy'))}, {summary.get('eval_split')} " \
           f"{_pct(summary.get('eval_accuracy'))}"
    if "compressed_eval_accuracy" in summary:
        line += f", compressed (keep {summary['keep']}) {_pct(summary['compressed_eval_accuracy'])}"
    print(line)
    print(f"adapter: {config['out']}/adapter")
    return 0


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"
