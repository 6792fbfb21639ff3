"""The VTAB-1k protocol (docs/design.md §2) over one or many tasks, resumable, into a run folder.

Per task: the lr x wd grid trains on train800 and is judged on val200 at the last epoch (ties -> the smaller lr,
then the smaller wd); the chosen configuration trains on train800val200 with N seeds and each is evaluated on test
at the last epoch; optionally each seed is compressed (group-lasso selection) and evaluated beside it. A seed
varies the initialisation and the dropout masks; every seed sees the images in the same order (`data_seed`), since
the seeds train together in one pass over the store (the official code reshuffles per seed: docs/protocol.md).

Run folder::

    config.yaml                      resolved configuration
    stores/<task>/<split>/           feature stores (or under --store-dir), reused when their metadata matches
    tasks/<task>/grid/lr<lr>_wd<wd>/ metrics.jsonl (per epoch), result.json (committed last)
    tasks/<task>/final/seed<s>/      metrics.jsonl, adapter/, adapter-compressed/, result.json
    tasks/<task>/summary.json        chosen configuration, test mean ± std, compressed result
    metrics.jsonl                    every unit's per-epoch records and test results, rebuilt after each task
    summary.json, results.md, results.csv

Units are trained in fixed chunks (`grid_chunk` configurations sharing one pass over the store); a chunk whose
units all committed is skipped on resume, any other is wiped and retrained, so a resumed run computes exactly
what an uninterrupted one does.

Methods that change the backbone's features (`store_trainable` False in the registry: fine-tuning, BitFit, VPT,
LoRA, AdaptFormer, vqt-concat and the vqt+X combinations) train online from images, one configuration per chunk
(`train_online_configs`, each from the pristine backbone); no feature store is extracted for them and test images
stream through each trained model. Without `--lrs`/`--wds` each method uses its own default grid
(each method's `SPEC.grid`, `vqt.methods`).

Several workers may share one run folder — the ranks of a `torchrun`, independent jobs (a SLURM array) or both —
with no coordinator: each unit (a grid chunk, a seed chunk with its test evaluation) and each feature store is
claimed with an exclusive-create claim file (`vqt.distributed.claims`, under <run>/claims/); a worker does the
first free unit in task order, skips units live workers hold, waits for what it depends on (the seeds need the
grid's choice, a task's summary every seed) and, when it finds everything done, writes the outputs (identical
whoever writes them). Ranks train different units, each alone (no DDP inside the sweep). A killed worker loses its
current unit only (docs/distributed.md, "The sweep").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vqt.checkpoint.trained import save_trained
from vqt.data.tasks import TaskSpec, check_data_root, class_names, make_dataset, read_split, resolve_task_list
from vqt.distributed.claims import ClaimLost, Claims, check_exclusive_create, poll_interval
from vqt.errors import VQTError
from vqt.features import FeatureStore
from vqt.methods.registry import get_method, method_grid
from vqt.protocol.accuracy import evaluate_images, evaluate_store_models
from vqt.protocol.compression import compress, keep_fraction
from vqt.protocol.fitting import Trained, make_recipe, train_online_configs, train_store_configs
from vqt.protocol.setup import choose, epoch_records, load_backbone, resolve_compute, task_queries
from vqt.protocol.stores import task_store
from vqt.protocol.validation import validate_config
from vqt.report import tables, tensorboard
from vqt.rundir import (
    METRICS_FILE,
    SUMMARY_FILE,
    RunDir,
    StopCounter,
    read_jsonl,
    reset_unit,
    unit_done,
    unit_name,
    write_json,
    write_jsonl,
    write_text,
)
from vqt.training import GridConfig, Recipe, grid_configs
from vqt.training.feeding import AnyStore, place_store, resolve_store_device, store_nbytes
from vqt.training.recipe import scaled_lr

log = logging.getLogger("vqt.protocol")

CLAIMS_DIR = "claims"  # <run>/claims/<task>/{grid,seeds}-<chunk>.<generation>.claim (vqt.distributed.claims)
WORKED, WAITING = "worked", "waiting"  # what `Sweep.advance` did when it returns no task summary

SWEEP_DEFAULTS: dict[str, Any] = {
    "backbone": "vit_base_patch16_224.orig_in21k",
    "data_root": None,
    "tasks": "all",
    "method": "vqt",
    "queries": None,
    "variant": "concat",
    "query_dropout": 0.1,
    "tuned_layers": None,  # adapting methods: only the last N blocks adapted (None: all)
    "transform": "backbone",
    "img_size": None,
    "lrs": None,  # None: the method's own grid (its `SPEC.grid`)
    "wds": None,
    "seeds": 5,
    "grid_seed": 0,
    "data_seed": 0,
    "epochs": 100,
    "warmup_epochs": 10,
    "batch_size": 128,
    "eval_every": 10,
    "compress": None,
    "group_lasso": 1e-4,
    "grid_chunk": 0,
    "store_dtype": "float16",
    "out": "runs/vtab1k",
    "store_dir": None,
    "overwrite": False,
    "overwrite_stores": False,
    "device": "auto",
    "precision": "auto",  # resolved once per run for its device (vqt.precision); config.yaml records the result
    "store_device": "auto",
    "num_workers": 0,
    "extract_batch": 64,
    "eval_batch": 64,
    "test_store": False,
    "progress": True,
    "tensorboard": None,
}


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """A fixed partition (size 0: one chunk), so what trains together never depends on what is done."""
    size = size if size and size > 0 else max(1, len(items))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


PHASE_WORDS = {"grid": "grid", "seeds": "seed"}  # how the log names a chunk of each phase


@dataclass(frozen=True)
class TaskContext:
    """What every phase of one task needs: where it writes, Q, the method's keyword arguments, its classes and
    the recipe."""

    task: TaskSpec
    tdir: Path
    queries: int
    kwargs: dict[str, Any]
    num_classes: int
    names: list[str]
    recipe: Recipe


class Sweep:
    """One sweep over a run folder; `run()` does the work, skipping what is committed."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {**SWEEP_DEFAULTS, **{k: v for k, v in config.items() if v is not None or k not in
                                             SWEEP_DEFAULTS}}
        c = self.config
        validate_config(c)  # impossible settings refused before any work, naming the option
        self.method = get_method(c["method"]).name
        self.online = not get_method(self.method).store_trainable
        if self.online and c["compress"] is not None:
            raise VQTError(f"--compress {c['compress']} retrains the head on stored training features, which method "
                           f"{self.method!r} (trained online from images) does not have; drop --compress")
        if self.online and c["test_store"]:
            raise VQTError(f"--test-store evaluates from stored features, which method {self.method!r} (trained "
                           f"online from images) cannot read; drop --test-store")
        grid = method_grid(self.method)
        if c["lrs"] is None:
            c["lrs"] = list(grid.lrs)
        if c["wds"] is None:
            c["wds"] = list(grid.wds)
        self.tasks = resolve_task_list(c["tasks"], c["data_root"])
        check_data_root(c["data_root"], self.tasks)
        for task in self.tasks:  # an impossible --compress is refused before any work
            keep_fraction(c["compress"], task)
        if not c["lrs"] or not c["wds"] or int(c["seeds"]) < 1:
            raise VQTError("the grid needs at least one lr, one weight decay and one seed")
        self.run_dir = RunDir(c["out"])
        self.store_dir = Path(c["store_dir"]) if c["store_dir"] else self.run_dir.path / "stores"
        self.progress = bool(c["progress"])
        self.stopper = StopCounter()
        self.feature_cache: dict = {}  # head methods' frozen features of the current task (task_features)
        self.feature_task: str | None = None
        self.datasets: dict[tuple[str, str], Any] = {}
        self.placed: dict[tuple[str, str], AnyStore] = {}  # VQT training stores, placed once per task and split
        self.logged: set[Path] = set()  # committed units already passed to TensorBoard by this worker
        if c["tensorboard"]:
            tensorboard.require()  # refused now, not after the first task

    # ------------------------------------------------------------------ setup

    def recipe(self) -> Recipe:
        c = self.config
        return make_recipe(batch_size=int(c["batch_size"]), epochs=int(c["epochs"]),
                           warmup_epochs=int(c["warmup_epochs"]),
                      eval_every=int(c["eval_every"]), data_seed=int(c["data_seed"]))

    def queries_for(self, task: TaskSpec) -> int:
        return task_queries(self.config["queries"], task)

    def keep_for(self, task: TaskSpec) -> float | None:
        return keep_fraction(self.config["compress"], task)

    def store(self, task: str, split: str) -> FeatureStore:
        """A split's feature store, extracted by one worker at a time (a claim beside it; others wait, then reuse)."""
        c = self.config
        with self.claims.wait(self.store_dir / task / f".{split}"):
            return task_store(
                self.backbone, backbone_spec=c["backbone"], data_root=c["data_root"], task=task, split=split,
                transform=self.transform, transform_description=self.transform_description,
                store_dir=self.store_dir, dtype=c["store_dtype"], batch_size=int(c["extract_batch"]),
                num_workers=int(c["num_workers"]), progress=self.progress, overwrite=bool(c["overwrite_stores"]),
                precision=c["precision"],
            )

    def training_store(self, task: str, split: str) -> AnyStore:
        """`store(task, split)` where VQT's trainers read it: made resident on the device once per task and split
        (`--store-device`), not once per grid chunk; one task's stores at a time."""
        store = self.store(task, split)
        if get_method(self.method).training != "store-grid":  # only the one-pass grid reads it on the device
            return store
        key = (task, split)
        if key not in self.placed:
            self.placed = {k: v for k, v in self.placed.items() if k[0] == task}
            placement = resolve_store_device(self.config["store_device"], store_nbytes(store), self.device)
            self.placed[key] = place_store(store, placement, self.device)
        return self.placed[key]

    def dataset(self, task: str, split: str) -> Any:
        """The images of a split (online methods), built once per task and split."""
        key = (task, split)
        if key not in self.datasets:
            self.datasets = {k: v for k, v in self.datasets.items() if k[0] == task}  # one task's at a time
            self.datasets[key] = make_dataset(read_split(self.config["data_root"], task, split), self.transform)
        return self.datasets[key]

    def chunk_size(self) -> int:
        """Configurations per chunk: `grid_chunk` from a store; online, one (each trains on its own)."""
        return 1 if self.online else int(self.config["grid_chunk"])

    def train_configs(self, task: str, split: str, configs: list[GridConfig], num_classes: int, kwargs: dict,
                      recipe: Recipe, *, validate: bool) -> list[Trained]:
        """Train `configs` on `split`: from the feature store, or online from images (one at a time)."""
        c = self.config
        if self.online:
            return train_online_configs(
                self.method, self.backbone, num_classes, kwargs, self.dataset(task, split), configs, recipe,
                val_dataset=self.dataset(task, "val200") if validate else None,
                num_workers=int(c["num_workers"]), progress=self.progress, precision=c["precision"],
                distributed=False)  # ranks train different units (the claims), each alone
        return train_store_configs(
            self.method, self.backbone, num_classes, kwargs, self.training_store(task, split), configs, recipe,
            val_store=self.training_store(task, "val200") if validate else None, progress=self.progress,
            feature_cache=self.task_features(task), precision=c["precision"], store_device=c["store_device"])

    def task_features(self, task: str) -> dict:
        """The frozen features head methods share (`shared_store_features`) on `task`'s stores: grid, seeds,
        compression and test read them once. Only the current task's are kept (a sweep works task by task)."""
        if self.feature_task != task:
            self.feature_cache, self.feature_task = {}, task
        return self.feature_cache

    # ------------------------------------------------------------------ the protocol

    def run(self) -> dict[str, Any]:
        c = self.config
        self.device = resolve_compute(c)
        self.prepare_run_dir()
        started = time.time()
        loaded = load_backbone(c, self.device)
        self.backbone = loaded.backbone
        self.transform, self.transform_description = loaded.transform, loaded.description
        check_exclusive_create(self.run_dir.path / CLAIMS_DIR)  # claims must be atomic, or refuse in one line
        with Claims() as self.claims:
            summaries = self.work()
        summary = self.write_outputs(summaries, status="complete", seconds=time.time() - started)
        failed = [s for s in summaries if s["notes"]]
        if failed:
            details = "; ".join(f"{s['task']}: {', '.join(s['notes'])}" for s in failed)
            summary["failures"] = (f"some configurations failed ({details}); they are marked in "
                                   f"{self.run_dir.path / 'results.md'}, the other results are complete")
        return summary

    def prepare_run_dir(self) -> None:
        """`RunDir.prepare`; under torchrun rank 0 first (it alone overwrites), then the others reopen the run.

        Independent jobs on one folder each prepare it themselves (same configuration: they resume it); they must
        not pass --overwrite, which would wipe what the others have done."""
        from vqt.distributed.context import broadcast_object, current

        c = self.config
        ctx = current()
        if not ctx.distributed:
            self.run_dir.prepare(c, overwrite=bool(c["overwrite"]), kind="sweep")
            return
        failure = None
        if ctx.is_main:
            try:
                self.run_dir.prepare(c, overwrite=bool(c["overwrite"]), kind="sweep")
            except VQTError as error:
                failure = error
        if broadcast_object(failure is None, "whether rank 0 prepared the run folder") and not ctx.is_main:
            self.run_dir.prepare(c, overwrite=False, kind="sweep")  # resume what rank 0 prepared
        elif failure is not None:
            raise failure
        elif not ctx.is_main:  # rank 0 stopped (a finished run, another configuration): the same answer here
            self.run_dir.prepare(c, overwrite=False, kind="sweep")
            raise VQTError(f"rank 0 could not prepare {self.run_dir.path} (its error is printed above)")

    def work(self) -> list[dict[str, Any]]:
        """Until every task is summarised: do the first unit (in task order) that no live worker holds, then look
        again; when every unit left is held by others (or waits for one that is), sleep and look again."""
        reported = 0
        while True:
            summaries: list[dict[str, Any]] = []
            worked = waiting = False
            for task in self.tasks:
                state = self.advance(task)
                if state is WORKED:
                    worked = True
                    break
                if state is WAITING:
                    waiting = True
                    continue
                summaries.append(state)  # type: ignore[arg-type]
                if not waiting and len(summaries) > reported and not self.run_dir.is_finished():
                    reported = len(summaries)  # the leading finished tasks, as the table grows
                    self.write_outputs(summaries, status="partial")
            if worked:
                continue
            if not waiting:
                return summaries
            time.sleep(poll_interval(self.claims.stale))

    def claim_base(self, task: str, unit: str) -> Path:
        return self.run_dir.path / CLAIMS_DIR / task / unit

    def committed(self, dirs: list[Path], tdir: Path) -> bool:
        """Whether every unit of a chunk committed (each one seen committed is logged to TensorBoard once)."""
        if not all(unit_done(d) for d in dirs):
            return False
        for d in dirs:
            if d not in self.logged:
                self.logged.add(d)
                tensorboard.log_committed(self.config["tensorboard"], d.relative_to(tdir.parent), d / METRICS_FILE)
        return True

    def advance(self, task: TaskSpec) -> dict[str, Any] | str:
        """Do one unit of `task` that is free (-> WORKED), or find all its free units waiting on ones other
        workers hold (-> WAITING), or find it finished (-> its summary, written to tasks/<task>/summary.json)."""
        try:
            return self._advance(task)
        except ClaimLost as lost:
            log.warning("%s; leaving that unit to it", lost)
            return WORKED

    def _advance(self, task: TaskSpec) -> dict[str, Any] | str:
        ctx = self.task_context(task)
        c = self.config
        # 1. the grid on train800, judged on val200 at the last epoch
        configs = grid_configs([float(x) for x in c["lrs"]], [float(x) for x in c["wds"]], [int(c["grid_seed"])])
        state = self.work_on_chunks(ctx, "grid", configs, lambda cfg: ctx.tdir / "grid" / unit_name(cfg),
                                    self.train_grid_chunk)
        if state is not None:
            return state  # the seeds need the grid's choice
        summary = self.grid_summary(ctx, configs)
        if summary.get("status") == "failed":  # every grid configuration failed
            return summary
        # 2. the chosen configuration on train800val200, N seeds, evaluated on test at the last epoch
        seeds = [GridConfig(summary["lr"], summary["weight_decay"], s) for s in range(int(c["seeds"]))]
        state = self.work_on_chunks(ctx, "seeds", seeds, lambda cfg: ctx.tdir / "final" / f"seed{cfg.seed}",
                                    lambda *unit: self.train_seed_chunk(*unit, best=summary))
        if state is not None:
            return state  # the task's summary needs every seed's test result
        return self.final_summary(ctx, summary, seeds)

    def task_context(self, task: TaskSpec) -> TaskContext:
        c = self.config
        queries = self.queries_for(task)
        kwargs = get_method(self.method).kwargs(queries=queries, variant=c["variant"],
                                               query_dropout=c["query_dropout"], tuned_layers=c["tuned_layers"])
        trainval_images = read_split(c["data_root"], task.name, "train800val200")
        return TaskContext(task, self.run_dir.path / "tasks" / task.name, queries, kwargs,
                           trainval_images.num_classes, class_names(trainval_images), self.recipe())

    def work_on_chunks(self, ctx: TaskContext, phase: str, configs: list[GridConfig],
                       unit_dir: Callable[[GridConfig], Path], train_chunk: Callable[..., None]) -> str | None:
        """Train the first free chunk of `phase` (-> WORKED); WAITING when every unfinished chunk is held by a live
        worker; None when all of them committed (the phase is done)."""
        pending = False
        for index, chunk in enumerate(chunks(configs, self.chunk_size())):
            dirs = [unit_dir(cfg) for cfg in chunk]
            if self.committed(dirs, ctx.tdir):
                continue
            claim = self.claims.claim(self.claim_base(ctx.task.name, f"{phase}-{index}"))
            if claim is None:
                pending = True  # a live worker trains it
                continue
            with claim:
                if self.committed(dirs, ctx.tdir):  # finished by another worker between the look and the claim
                    continue
                log.info("task %s (%s): %s chunk %d", ctx.task.name, ctx.task.group, PHASE_WORDS[phase], index)
                for d in dirs:
                    reset_unit(d)
                train_chunk(ctx, chunk, dirs, claim)
            return WORKED
        return WAITING if pending else None

    def commit_unit(self, ctx: TaskContext, directory: Path, records: list[dict[str, Any]], result: dict[str, Any],
                    claim: Any) -> None:
        """Write one unit's metrics.jsonl (and TensorBoard scalars), then its result.json: the commit."""
        write_jsonl(directory / METRICS_FILE, records)
        tensorboard.log_unit(self.config["tensorboard"], directory.relative_to(ctx.tdir.parent), records)
        claim.check()  # not ours any more: leave the unit to the worker that took it over
        write_json(directory / "result.json", result)
        self.stopper.committed()  # a kill may land between two units of one chunk

    def train_grid_chunk(self, ctx: TaskContext, chunk: list[GridConfig], dirs: list[Path], claim: Any) -> None:
        trained = self.train_configs(ctx.task.name, "train800", chunk, ctx.num_classes, ctx.kwargs, ctx.recipe,
                                     validate=True)
        for t, d in zip(trained, dirs, strict=True):
            ident = {"task": ctx.task.name, "phase": "grid", "lr": t.config.lr,
                     "weight_decay": t.config.weight_decay, "seed": t.config.seed}
            final_val = None if t.failed else t.history.final_val_accuracy
            self.commit_unit(ctx, d, epoch_records(t, ident), {**ident, "status": "failed" if t.failed else "ok",
                                                               "failure": t.failed, "val_accuracy": final_val}, claim)

    def grid_summary(self, ctx: TaskContext, configs: list[GridConfig]) -> dict[str, Any]:
        """The task's summary after the grid: the chosen lr / wd (status "failed" when every configuration did)."""
        grid = [unit_done(ctx.tdir / "grid" / unit_name(cfg)) for cfg in configs]
        notes = [f"{sum(r['status'] == 'failed' for r in grid)} of {len(grid)} grid configurations failed "
                 "(non-finite loss)"] if any(r["status"] == "failed" for r in grid) else []
        ok = [r for r in grid if r["status"] == "ok"]
        summary: dict[str, Any] = {"task": ctx.task.name, "group": ctx.task.group,
                                   "queries": ctx.queries if "num_queries" in ctx.kwargs else None,
                                   "method": self.method, "num_classes": ctx.num_classes, "grid": grid,
                                   "notes": notes}
        if not ok:
            summary.update(status="failed", lr=None, weight_decay=None, val_accuracy=None, test_mean=None,
                           test_std=None, seeds_done=0)
            write_json(ctx.tdir / SUMMARY_FILE, summary)
            return summary
        best = choose(ok)
        summary.update(lr=best["lr"], weight_decay=best["weight_decay"], val_accuracy=best["val_accuracy"])
        return summary

    def train_seed_chunk(self, ctx: TaskContext, chunk: list[GridConfig], dirs: list[Path], claim: Any, *,
                         best: dict[str, Any]) -> None:
        c, recipe, keep = self.config, ctx.recipe, self.keep_for(ctx.task)
        trained = self.train_configs(ctx.task.name, "train800val200", chunk, ctx.num_classes, ctx.kwargs, recipe,
                                     validate=False)
        models = [t.model for t in trained if t.model is not None]
        compressed: list[nn.Module] = []
        if keep is not None:
            trainval = self.store(ctx.task.name, "train800val200")
            effective = scaled_lr(best["lr"], recipe.batch_size, recipe.scale_lr)
            compressed = [compress(m, trainval, keep_fraction=keep, lr=effective,
                                   weight_decay=best["weight_decay"], epochs=recipe.epochs,
                                   warmup_epochs=recipe.warmup_epochs,
                                   group_lasso=float(c["group_lasso"]), seed=t.config.seed,
                                   feature_cache=self.task_features(ctx.task.name))
                          for t, m in zip([t for t in trained if t.model is not None], models, strict=True)]
        accuracies = self.test_accuracies(ctx.task.name, models + compressed) if models else []
        position = 0
        for t, d in zip(trained, dirs, strict=True):
            ident = {"task": ctx.task.name, "phase": "final", "lr": t.config.lr,
                     "weight_decay": t.config.weight_decay, "seed": t.config.seed}
            records = epoch_records(t, ident)
            result = {**ident, "status": "failed" if t.failed else "ok", "failure": t.failed,
                      "test_accuracy": None, "compressed_test_accuracy": None, "keep": keep}
            if t.model is not None:
                result["test_accuracy"] = accuracies[position]
                extra = {"task": ctx.task.name, "seed": t.config.seed, "lr": t.config.lr,
                         "weight_decay": t.config.weight_decay}
                self.save(t.model, d / "adapter", ctx.kwargs, ctx.names, extra)
                if keep is not None:
                    result["compressed_test_accuracy"] = accuracies[len(models) + position]
                    self.save(compressed[position], d / "adapter-compressed", ctx.kwargs, ctx.names,
                              {**extra, "keep_fraction": keep})
                position += 1
            records.append({**ident, "kind": "test", "test_accuracy": result["test_accuracy"],
                            "compressed_test_accuracy": result["compressed_test_accuracy"]})
            self.commit_unit(ctx, d, records, result, claim)

    def test_accuracies(self, task: str, models: list[nn.Module]) -> list[float]:
        """Each model's accuracy on the task's test split: from its feature store (`--test-store`) or its images."""
        c = self.config
        if c["test_store"]:
            return evaluate_store_models(models, self.store(task, "test"), precision=c["precision"],
                                         cache=self.task_features(task))
        return evaluate_images(models, self.dataset(task, "test"), batch_size=int(c["eval_batch"]),
                               num_workers=int(c["num_workers"]), progress=self.progress, precision=c["precision"],
                               distributed=False)

    def final_summary(self, ctx: TaskContext, summary: dict[str, Any], seeds: list[GridConfig]) -> dict[str, Any]:
        """The task's summary once every seed committed: test mean ± std (and the compressed models')."""
        keep = self.keep_for(ctx.task)
        finals = [unit_done(ctx.tdir / "final" / f"seed{cfg.seed}") for cfg in seeds]
        done = [r for r in finals if r["status"] == "ok"]
        if len(done) < len(finals):
            summary["notes"].append(f"{len(finals) - len(done)} of {len(finals)} seeds failed (non-finite loss)")
        mean, std = tables.mean_std([r["test_accuracy"] for r in done])
        summary.update(status="ok" if done else "failed", test_mean=mean, test_std=std, seeds_done=len(done),
                       seeds=[r["test_accuracy"] for r in finals], final=finals)
        if keep is not None and done:
            cmean, cstd = tables.mean_std([r["compressed_test_accuracy"] for r in done])
            summary["compressed"] = {"keep": keep, "test_mean": cmean, "test_std": cstd,
                                     "seeds": [r["compressed_test_accuracy"] for r in done]}
        write_json(ctx.tdir / SUMMARY_FILE, summary)
        return summary

    def save(self, model: nn.Module, directory: Path, kwargs: dict, names: list[str], extra: dict) -> None:
        c = self.config
        save_trained(model, directory, method=self.method, kwargs=kwargs, backbone_spec=c["backbone"],
                     transform=self.transform_description, class_names=names, extra=extra)

    # ------------------------------------------------------------------ outputs

    def write_outputs(self, summaries: list[dict[str, Any]], *, status: str, seconds: float | None = None
                      ) -> dict[str, Any]:
        rows = [tables.task_row(s) for s in summaries]
        path = self.run_dir.path
        title = f"{self.method} on {self.config['backbone']}"
        write_text(path / "results.md", tables.markdown(rows, title))
        write_text(path / "results.csv", tables.to_csv(rows))
        records = []
        for s in summaries:
            tdir = path / "tasks" / s["task"]
            for unit in sorted((tdir / "grid").glob("*/" + METRICS_FILE)) + sorted(
                    (tdir / "final").glob("*/" + METRICS_FILE)):
                records.extend(read_jsonl(unit))
        write_jsonl(path / METRICS_FILE, records)
        summary = {"status": status, "method": self.method, "backbone": self.config["backbone"],
                   "precision": self.config["precision"],
                   "transform": getattr(self, "transform_description", None), "rows": rows,
                   "group_means": tables.group_means(rows),
                   "compressed_group_means": tables.group_means(rows, "compressed_mean"),
                   "tasks": [s["task"] for s in summaries]}
        if seconds is not None:
            summary["seconds"] = round(seconds, 1)
        write_json(path / SUMMARY_FILE, summary)
        return summary


def run_sweep(config: dict[str, Any], on_table: Callable[[list[dict[str, Any]]], None] | None = None
              ) -> dict[str, Any]:
    """Python API of `vqt sweep`: run (or resume) the protocol described by `config` (keys of SWEEP_DEFAULTS)."""
    summary = Sweep(config).run()
    if on_table is not None:
        on_table(summary["rows"])
    return summary  # summary.get("failures"): a message when some configuration failed (NaN loss)
