"""`vqt sweep`: the VTAB-1k protocol (grid on train800/val200, N seeds on train800val200 -> test) on many tasks."""

from __future__ import annotations

import argparse

from vqt.protocol.config import Option, add_options, compress_spec, float_list, queries_spec, resolve
from vqt.protocol.sweep import SWEEP_DEFAULTS as D

OPTIONS = (
    Option("--backbone", D["backbone"], "backbone spelling: NAME.TAG (hub), NAME@FILE, NAME@random, offline:dinov2_s14"),
    Option("--data-root", D["data_root"], "VTAB-1k root: <root>/<task>/{train800,val200,train800val200,test}.txt"),
    Option("--tasks", D["tasks"], "'all', a group (natural, specialized, structured) or a comma list of tasks"),
    Option("--method", D["method"], "what to train from the feature store: vqt, linear or head2toe"),
    Option("--queries", D["queries"], "Q per layer for every task ('10') or per task ('svhn=20,dtd=1'); "
           "unset: the official per-task Q of the registry", type=queries_spec),
    Option("--variant", D["variant"], "how a layer's query outputs form its feature piece",
           choices=("concat", "mean", "weighted")),
    Option("--query-dropout", D["query_dropout"], "dropout on the queries in training", type=float),
    Option("--transform", D["transform"], "input normalisation: the backbone's own pretrained config, or the "
           "official VTAB-1k one (bilinear resize, ImageNet mean/std)", choices=("backbone", "official")),
    Option("--img-size", D["img_size"], "input resolution the backbone is built at (unset: its own)", type=int),
    Option("--lrs", D["lrs"], "lr grid (unscaled; multiplied by batch/256)", type=float_list),
    Option("--wds", D["wds"], "weight-decay grid", type=float_list),
    Option("--seeds", D["seeds"], "seeds of the chosen configuration on train800val200", type=int),
    Option("--grid-seed", D["grid_seed"], "initialisation seed of the grid configurations", type=int),
    Option("--data-seed", D["data_seed"], "seed of the training-image order (shared by every configuration)", type=int),
    Option("--epochs", D["epochs"], "training epochs", type=int),
    Option("--warmup-epochs", D["warmup_epochs"], "linear warm-up epochs before the cosine", type=int),
    Option("--batch-size", D["batch_size"], "training batch", type=int),
    Option("--eval-every", D["eval_every"], "val200 accuracy every this many epochs (always at the last)", type=int),
    Option("--compress", D["compress"], "group-lasso feature selection after training, reported beside the "
           "uncompressed result: a keep fraction (0.7), 'official' (0.7 on the Q=1 tasks) or 'none'",
           type=compress_spec),
    Option("--group-lasso", D["group_lasso"], "lambda of the compression penalty", type=float),
    Option("--grid-chunk", D["grid_chunk"], "configurations trained together in one pass over the store "
           "(0: all); also the unit a killed sweep redoes", type=int),
    Option("--store-dtype", D["store_dtype"], "dtype of the feature stores",
           choices=("float16", "bfloat16", "float32")),
    Option("--out", D["out"], "run folder (resumed when it holds an unfinished run of the same configuration)"),
    Option("--store-dir", D["store_dir"], "feature-store cache (unset: <out>/stores)"),
    Option("--overwrite", D["overwrite"], "redo a finished run (or one of another configuration) in --out",
           flag_action=True),
    Option("--overwrite-stores", D["overwrite_stores"], "replace cached stores made for another request",
           flag_action=True),
    Option("--device", D["device"], "cpu, cuda, cuda:1 or auto"),
    Option("--num-workers", D["num_workers"], "image-decoding worker processes", type=int),
    Option("--extract-batch", D["extract_batch"], "images per backbone pass when extracting stores", type=int),
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
        description=__doc__ + " Every option can also be given in a YAML file (--config); the command line wins.",
    )
    add_options(parser, OPTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vqt.errors import VQTError
    from vqt.protocol.rundir import user_errors
    from vqt.protocol.sweep import run_sweep
    from vqt.protocol.tables import rich_table

    config = resolve(args, OPTIONS)
    config["progress"] = not config.pop("no_progress")
    summary = user_errors(run_sweep)(config)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(rich_table(summary["rows"], title=f"{summary['method']} on {summary['backbone']}"))
    console.print(f"results: {config['out']}/results.md, {config['out']}/results.csv")
    if summary.get("failures"):
        raise VQTError(summary["failures"])
    return 0
