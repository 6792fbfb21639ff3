"""`vqt sweep`: the VTAB-1k protocol (grid on train800/val200, N seeds on train800val200 -> test) on many tasks."""

from __future__ import annotations

import argparse

from vqt.cli.options import (
    Option,
    add_options,
    compress_spec,
    float_list,
    queries_spec,
    resolve,
    shared_options,
)
from vqt.protocol.sweep import SWEEP_DEFAULTS as D

OPTIONS = (
    *shared_options(D, "--backbone"),
    Option("--data-root", D["data_root"], "VTAB-1k root: <root>/<task>/{train800,val200,train800val200,test}.txt"),
    Option("--tasks", D["tasks"], "'all', a group (natural, specialized, structured) or a list of tasks", many=True),
    Option("--method", D["method"], "any method of the registry (vqt.method_names()): vqt, linear and head2toe "
           "train from feature stores; finetune, bitfit, vpt-shallow, vpt-deep, lora, adaptformer, vqt-concat and "
           "vqt+X train online from images, one configuration at a time"),
    Option("--queries", D["queries"], "Q per layer for every task ('10') or per task ('svhn=20,dtd=1'); "
           "unset: the official per-task Q of the registry", type=queries_spec, many=True),
    *shared_options(D, "--variant", "--query-dropout", "--tuned-layers"),
    Option("--transform", D["transform"], "input pipeline: 'backbone' (its own pretrained config), "
           "'official' (the official VQT code's: TensorFlow bilinear resize to 224x224 without antialiasing, "
           "ImageNet mean/std) or 'petl' (NOAH and the PETL code bases on the VTAB-1k image lists: PIL bicubic "
           "resize to 224x224, ImageNet mean/std)", choices=("backbone", "official", "petl")),
    *shared_options(D, "--img-size"),
    Option("--lrs", D["lrs"], "lr grid (unscaled; multiplied by batch/256); unset: the method's own grid "
           "(vqt: 1.0,0.5,0.25,0.1,0.05; others: docs/protocol.md, 'Per-method grids and recipes')", type=float_list,
           many=True),
    Option("--wds", D["wds"], "weight-decay grid; unset: the method's own (vqt: 0.01,0.001,0.0001,0)",
           type=float_list, many=True),
    Option("--seeds", D["seeds"], "seeds of the chosen configuration on train800val200", type=int),
    Option("--grid-seed", D["grid_seed"], "initialisation seed of the grid configurations", type=int),
    Option("--data-seed", D["data_seed"], "seed of the training-image order (shared by every configuration)", type=int),
    *shared_options(D, "--epochs", "--warmup-epochs", "--batch-size"),
    Option("--eval-every", D["eval_every"], "val200 accuracy every this many epochs (always at the last)", type=int),
    Option("--compress", D["compress"], "group-lasso feature selection after training, reported beside the "
           "uncompressed result: a keep fraction (0.7), 'official' (0.7 on the Q=1 tasks) or 'none'",
           type=compress_spec),
    *shared_options(D, "--group-lasso"),
    Option("--grid-chunk", D["grid_chunk"], "configurations trained together in one pass over the store "
           "(0: all); also the unit a killed sweep redoes", type=int),
    *shared_options(D, "--store-dtype"),
    Option("--out", D["out"], "run folder (resumed when it holds an unfinished run of the same configuration)"),
    Option("--tensorboard", D["tensorboard"], "also write the per-epoch train loss, lr and val accuracy as "
           "TensorBoard runs, one per configuration: DIR/<task>/grid/lr<lr>_wd<wd> and DIR/<task>/final/seed<s>"
           " (needs pip install 'visual-query-tuning[tensorboard]')"),
    *shared_options(D, "--store-dir"),
    Option("--overwrite", D["overwrite"], "redo a finished run (or one of another configuration) in --out",
           flag_action=True),
    *shared_options(D, "--overwrite-stores", "--device", "--precision", "--store-device", "--num-workers",
                    "--extract-batch"),
    Option("--eval-batch", D["eval_batch"], "images per backbone pass when evaluating on test", type=int),
    Option("--test-store", D["test_store"], "evaluate on test from a feature store of it (extracted once, shared "
           "by methods via --store-dir) instead of streaming the test images through the backbone",
           flag_action=True),
    Option("--no-progress", False, "hide progress bars", flag_action=True),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run the VTAB-1k protocol on one task or many and write the results table",
        description=__doc__ + " Every option can also be given in a YAML file (--config); the command line wins."
        " The official code's embedding dropout (VQT(embed_dropout=True) in Python) is not applied: store"
        " training cannot apply it (a store holds one fixed backbone pass).",
    )
    add_options(parser, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vqt.errors import VQTError
    from vqt.protocol.sweep import run_sweep
    from vqt.report.tables import rich_table
    from vqt.rundir import FinishedRun, user_errors

    config = resolve(args, OPTIONS)
    config["progress"] = not config.pop("no_progress")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    try:
        summary = user_errors(run_sweep)(config)
    except FinishedRun as finished:  # a finished run rerun with the same options: its results, not an error
        summary = finished.summary
        console.print(f"{finished.path} already holds this finished sweep run (pass --overwrite to redo it):")
        failed = [f"{r['task']}: {r['notes']}" for r in summary["rows"] if r.get("notes")]
        if failed:
            summary["failures"] = (f"some configurations failed ({'; '.join(failed)}); they are marked in "
                                   f"{finished.path / 'results.md'}, the other results are complete")
    console.print(rich_table(summary["rows"], title=f"{summary['method']} on {summary['backbone']}"))
    console.print(f"results: {config['out']}/results.md, {config['out']}/results.csv")
    if summary.get("failures"):
        raise VQTError(summary["failures"])
    return 0
