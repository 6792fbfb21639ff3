"""One task, one configuration (`vqt train`): from a feature store, or online from images (with augmentation).

Writes a run folder: config.yaml, metrics.jsonl (per epoch, then the evaluation), adapter/ (and
adapter-compressed/), summary.json. A non-finite loss stops the run with a clear error after recording it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqt.checkpoint.trained import save_trained
from vqt.data.lists import vtab_task_dir
from vqt.data.tasks import TaskSpec, check_data_root, class_names, make_dataset, read_split, resolve_task_list
from vqt.data.transforms import build_transform
from vqt.errors import VQTError
from vqt.methods.registry import get_method, method_grid
from vqt.protocol.accuracy import evaluate_images
from vqt.protocol.compression import compress, keep_fraction
from vqt.protocol.fitting import Trained, make_recipe, train_online_configs, train_store_configs
from vqt.protocol.setup import RunBackbone, choose, epoch_records, load_backbone, resolve_compute, task_queries
from vqt.protocol.stores import task_store
from vqt.protocol.sweep import SWEEP_DEFAULTS
from vqt.protocol.validation import validate_config
from vqt.report import tensorboard
from vqt.rundir import METRICS_FILE, SUMMARY_FILE, RunDir, unit_name, write_json, write_jsonl
from vqt.training import GridConfig
from vqt.training.grid import grid_configs
from vqt.training.recipe import Recipe, scaled_lr

log = logging.getLogger("vqt.protocol")

DEFAULT_WD = 1e-4  # the weight decay of a run given --lr but no --wd
SELECTION_SPLITS = ("train800", "val200")  # where an unset --lr (and --wd) is chosen, as the sweep's grid does

TRAIN_DEFAULTS: dict[str, Any] = {
    **{k: SWEEP_DEFAULTS[k] for k in ("backbone", "data_root", "method", "queries", "variant", "query_dropout",
                                      "tuned_layers", "transform", "img_size", "epochs", "warmup_epochs", "batch_size",
                                      "eval_every", "group_lasso", "store_dtype", "store_dir", "overwrite",
                                      "overwrite_stores", "device", "precision", "store_device", "num_workers",
                                      "extract_batch", "eval_batch", "progress", "tensorboard")},
    "task": None,
    "lr": None,  # None: chosen on train800 -> val200 from the method's grid (store training; see choose_config)
    "wd": None,  # None: chosen with the lr; with a given --lr, DEFAULT_WD
    "seed": 0,
    "data_seed": None,
    "train_split": "train800val200",
    "val_split": None,
    "eval_split": "test",
    "online": False,
    "augment": False,
    "compress": None,
    "out": "runs/train",
}


def run_train(config: dict[str, Any]) -> dict[str, Any]:
    """Python API of `vqt train`; returns the summary (accuracies as fractions)."""
    c, method, task, online = resolve_train_config(config)
    run = RunDir(c["out"])
    if c["tensorboard"]:
        tensorboard.require()
    device = resolve_compute(c)
    run.prepare(c, overwrite=bool(c["overwrite"]), kind="train")
    started = time.time()
    loaded = load_backbone(c, device)
    kwargs = get_method(method).kwargs(queries=task_queries(c["queries"], task), variant=c["variant"],
                                       query_dropout=c["query_dropout"], tuned_layers=c["tuned_layers"])
    train_images = read_split(c["data_root"], task.name, c["train_split"])
    store_dir = Path(c["store_dir"]) if c["store_dir"] else run.path / "stores"

    def store(split: str):
        return task_store(loaded.backbone, backbone_spec=c["backbone"], data_root=c["data_root"], task=task.name,
                          split=split, transform=loaded.transform, transform_description=loaded.description,
                          store_dir=store_dir, dtype=c["store_dtype"], batch_size=int(c["extract_batch"]),
                          num_workers=int(c["num_workers"]), progress=bool(c["progress"]),
                          overwrite=bool(c["overwrite_stores"]), precision=c["precision"],
                          shard=True)  # under torchrun every rank calls this: each extracts its shard

    selection = None
    if c["lr"] is None:
        selection = choose_config(c, method, loaded.backbone, train_images.num_classes, kwargs, store)
        c["lr"], c["wd"] = selection["lr"], selection["weight_decay"]
    recipe = make_recipe(lr=float(c["lr"]), weight_decay=float(c["wd"]), batch_size=int(c["batch_size"]),
                         epochs=int(c["epochs"]), warmup_epochs=int(c["warmup_epochs"]),
                         eval_every=int(c["eval_every"]), seed=int(c["seed"]), data_seed=c["data_seed"])
    ident = {"task": task.name, "phase": "train", "lr": recipe.lr, "weight_decay": recipe.weight_decay,
             "seed": recipe.seed}
    trained, train_store = fit_one(c, method, task, online, loaded, kwargs, train_images, recipe, store)
    records = epoch_records(trained, ident)
    tb_run = f"{task.name}/train/{unit_name(trained.config)}_seed{recipe.seed}"
    if trained.failed:
        write_jsonl(run.path / METRICS_FILE, records)
        tensorboard.log_unit(c["tensorboard"], tb_run, records)
        write_json(run.path / SUMMARY_FILE, {"status": "failed", "failure": trained.failed, **ident})
        raise VQTError(f"training stopped: {trained.failed} (lr {recipe.lr:g}, wd {recipe.weight_decay:g}); "
                       "try a smaller --lr")
    summary: dict[str, Any] = {"status": "complete", **ident, "method": method, "backbone": c["backbone"],
                               "queries": kwargs.get("num_queries"), "transform": loaded.description,
                               "precision": c["precision"],
                               "val_accuracy": trained.history.final_val_accuracy, "eval_split": c["eval_split"]}
    if selection is not None:
        summary["lr_selection"] = selection
    finish_run(c, method, task, run, loaded, kwargs, class_names(train_images), recipe, trained.model, train_store,
               summary, records, ident)
    summary["seconds"] = round(time.time() - started, 1)
    write_jsonl(run.path / METRICS_FILE, records)
    tensorboard.log_unit(c["tensorboard"], tb_run, records)
    write_json(run.path / SUMMARY_FILE, summary)
    return summary


def resolve_train_config(config: dict[str, Any]) -> tuple[dict[str, Any], str, TaskSpec, bool]:
    """The effective configuration, the method's canonical name, the task and whether it trains online; every
    setting that cannot work is refused here, before any work."""
    c = {**TRAIN_DEFAULTS, **{k: v for k, v in config.items() if v is not None or k not in TRAIN_DEFAULTS}}
    validate_config(c)  # impossible settings refused before any work, naming the option
    if not c["task"]:
        raise VQTError("no task given (--task)")
    method = get_method(c["method"]).name
    online = bool(c["online"]) or not get_method(method).store_trainable
    if c["augment"] and not online:
        raise VQTError("--augment needs --online (a feature store holds one fixed view of each image)")
    if c["compress"] is not None and online:  # "official" too: it would be silently skipped
        raise VQTError(f"--compress {c['compress']} retrains the head on the training features of a feature store, "
                       f"which {'--online' if c['online'] else f'method {method!r}'} does not use; drop --compress")
    if online and c.get("store_device") not in (None, "auto"):  # it would be silently ignored
        raise VQTError(f"--store-device {c['store_device']} places a feature store, which "
                       f"{'--online' if c['online'] else f'method {method!r}'} does not use; drop --store-device")
    task = resolve_task_list(c["task"], c["data_root"])[0]
    splits = tuple(s for s in (c["train_split"], c["val_split"], c["eval_split"]) if s)
    check_data_root(c["data_root"], [task], splits)
    keep_fraction(c["compress"], task)  # refused before any work where it cannot apply
    if c["lr"] is None and online:
        c["lr"] = online_default_lr(method)
        log.warning("--lr not given: an online run uses the middle of the %s grid, lr %g (from a store it would be "
                    "chosen on train800 -> val200); pass --lr, or search it with `vqt sweep`", method, c["lr"])
    if c["lr"] is None:
        check_selection(c, task)
    elif c["wd"] is None:
        c["wd"] = DEFAULT_WD  # config.yaml records it; an unset lr is recorded unset (summary.json: the choice)
    return c, method, task, online


def fit_one(c: dict[str, Any], method: str, task: TaskSpec, online: bool, loaded: RunBackbone, kwargs: dict,
            train_images: Any, recipe: Recipe, store: Callable[[str], Any]) -> tuple[Trained, Any]:
    """Train the one configuration: online from images (the trainer of an online sweep unit) or from the
    stores; returns it and the training store (None online)."""
    config = [GridConfig(recipe.lr, recipe.weight_decay, recipe.seed)]
    num_classes = train_images.num_classes
    if online:
        train_transform = build_transform(c["transform"], loaded.backbone, img_size=loaded.img_size,
                                          train=bool(c["augment"]))[0]
        val = (make_dataset(read_split(c["data_root"], task.name, c["val_split"]), loaded.transform)
               if c["val_split"] else None)
        trained = train_online_configs(method, loaded.backbone, num_classes, kwargs,
                                       make_dataset(train_images, train_transform), config, recipe,
                                       val_dataset=val, num_workers=int(c["num_workers"]),
                                       progress=bool(c["progress"]), precision=c["precision"])[0]
        return trained, None
    train_store = store(c["train_split"])
    val_store = store(c["val_split"]) if c["val_split"] else None
    trained = train_store_configs(method, loaded.backbone, num_classes, kwargs, train_store, config, recipe,
                                  val_store=val_store, progress=bool(c["progress"]), precision=c["precision"],
                                  store_device=c["store_device"])[0]
    return trained, train_store


def finish_run(c: dict[str, Any], method: str, task: TaskSpec, run: RunDir, loaded: RunBackbone, kwargs: dict,
               names: list[str], recipe: Recipe, model: Any, train_store: Any, summary: dict[str, Any],
               records: list[dict[str, Any]], ident: dict[str, Any]) -> None:
    """Compress (with --compress), evaluate on --eval-split and save the adapter(s); fills `summary` and
    `records` in place."""
    keep = keep_fraction(c["compress"], task)
    models = [model]
    if keep is not None and train_store is not None:
        models.append(compress(model, train_store, keep_fraction=float(keep),
                               lr=scaled_lr(recipe.lr, recipe.batch_size, recipe.scale_lr),
                               weight_decay=recipe.weight_decay, epochs=recipe.epochs,
                               warmup_epochs=recipe.warmup_epochs, group_lasso=float(c["group_lasso"]),
                               seed=recipe.seed))
    if c["eval_split"]:
        dataset = make_dataset(read_split(c["data_root"], task.name, c["eval_split"]), loaded.transform)
        accuracies = evaluate_images(models, dataset, batch_size=int(c["eval_batch"]),
                                     num_workers=int(c["num_workers"]), progress=bool(c["progress"]),
                                     precision=c["precision"])
        summary["eval_accuracy"] = accuracies[0]
        if len(accuracies) > 1:
            summary["compressed_eval_accuracy"] = accuracies[1]
        records.append({**ident, "kind": "eval", "split": c["eval_split"], "accuracy": accuracies[0],
                        "compressed_accuracy": accuracies[1] if len(accuracies) > 1 else None})
    extra = {"task": task.name, "seed": recipe.seed, "lr": recipe.lr, "weight_decay": recipe.weight_decay}
    save_trained(model, run.path / "adapter", method=method, kwargs=kwargs, backbone_spec=c["backbone"],
                 transform=loaded.description, class_names=names, extra=extra)
    if len(models) > 1:
        save_trained(models[1], run.path / "adapter-compressed", method=method, kwargs=kwargs,
                     backbone_spec=c["backbone"], transform=loaded.description, class_names=names,
                     extra={**extra, "keep_fraction": keep})
        summary["keep"] = keep


def online_default_lr(method: str) -> float:
    """The lr of an online run given no --lr: the middle of the method's grid (training the whole grid through the
    backbone is a sweep's work, not one run's)."""
    lrs = sorted(method_grid(method).lrs, reverse=True)
    return float(lrs[len(lrs) // 2])


def check_selection(c: dict[str, Any], task: Any) -> None:
    """Refuse, before any work, a store run with no --lr whose lr cannot be chosen (see `choose_config`)."""
    folder = vtab_task_dir(Path(c["data_root"]), task.name)
    missing = [s for s in SELECTION_SPLITS if not (folder / f"{s}.txt").is_file()]
    if missing:
        raise VQTError(f"--lr not given: it is chosen on train800 -> val200, and {folder} has no "
                       f"{', '.join(f'{s}.txt' for s in missing)}; pass --lr, or make the lists with "
                       f"`vqt data split`")
    if c["eval_split"] in SELECTION_SPLITS:
        raise VQTError(f"--lr not given: it would be chosen on {c['eval_split']}, the --eval-split; pass --lr or "
                       f"evaluate on another split")


def choose_config(c: dict[str, Any], method: str, backbone: Any, num_classes: int, kwargs: dict,
                  store: Any) -> dict[str, Any]:
    """The lr (and, with no --wd, the weight decay) of a `vqt train` run given no --lr: the method's grid trained on
    train800 and judged on val200 at the last epoch, as the sweep's grid chooses (ties: the smaller lr, then wd).
    From a store it costs one batched pass for VQT and fixed-feature fits for the heads; it never reads the
    --eval-split. Online runs would train the whole grid through the backbone: they take `online_default_lr`."""
    grid = method_grid(method)
    wds = list(grid.wds) if c["wd"] is None else [float(c["wd"])]
    configs = grid_configs([float(x) for x in grid.lrs], wds, [int(c["seed"])])
    recipe = make_recipe(batch_size=int(c["batch_size"]), epochs=int(c["epochs"]),
                         warmup_epochs=int(c["warmup_epochs"]), eval_every=int(c["epochs"]),
                         data_seed=c["data_seed"] if c["data_seed"] is not None else int(c["seed"]))
    log.info("--lr not given: choosing it among %d configurations on train800 -> val200", len(configs))
    trained = train_store_configs(method, backbone, num_classes, kwargs, store("train800"), configs, recipe,
                                  val_store=store("val200"), progress=bool(c["progress"]),
                                  precision=c["precision"], store_device=c["store_device"])
    results = [{"lr": t.config.lr, "weight_decay": t.config.weight_decay,
                "val_accuracy": None if t.failed else t.history.final_val_accuracy} for t in trained]
    ok = [r for r in results if r["val_accuracy"] is not None]
    if not ok:
        raise VQTError("--lr not given and every configuration of the grid failed on train800 (non-finite loss); "
                       "pass --lr")
    best = choose(ok)
    return {"lr": best["lr"], "weight_decay": best["weight_decay"], "on": list(SELECTION_SPLITS), "grid": results}
