"""Planted-mutation check of the core: does the test suite notice when the core maths or bookkeeping is wrong?

Run from the repository root:

    python3 tests/mutation_check.py                       # every mutant, report on stdout
    python3 tests/mutation_check.py --out docs/mutation-check.md
    python3 tests/mutation_check.py --only qp_no_gate,grid_shared_dropout_generator
    python3 tests/mutation_check.py --check               # only check that every mutant still applies

How it works (why not mutmut: the whole suite takes ~4 minutes on 2 CPU cores, so each mutant runs only the
tests chosen for it):

- The committed tree (`git archive HEAD`) is exported once into a temporary directory; the working tree is never
  read or written, so uncommitted edits in src/ (including bugs planted on purpose by someone testing their
  tests) cannot leak into the result. `--overlay tests/FILE.py` copies a working-tree test file into the export
  (for developing a new killing test before it is committed; the report names every overlaid file).
- Every mutant is an exact text replacement in one file. Its original text must occur exactly once in the
  committed file, or the check stops before running anything: the list has to follow the code as it changes.
- Each mutant's tests run with `PYTHONPATH=<export>/src` and cwd=<export>, so the export's package shadows the
  editable install; `PYTHONDONTWRITEBYTECODE=1` and a purge of `__pycache__` keep a mutant's bytecode from being
  reused by the next run (a same-size edit within the same second would otherwise look unchanged to Python).
  Two checks prove the shadowing before any mutant counts: `import vqt` resolves into the export, and the
  `sentinel_import_error` mutant (raises at import) must be killed.
- The targeted tests first run on the unmutated export: a red baseline would make every mutant look killed, so
  the check stops there.
- A mutant is *killed* when its tests fail (pytest exit 1, or 2 for a collection error), *survived* when they
  pass, *timeout* past `--timeout`. A survivor must either be killed by a test (the tests added for this check live
  in the files of the
  code they test and are listed in KILL_TESTS) or carry an `equivalent=` reason below, which the report prints.

Exit status: 0 when every mutant is killed or explained, 1 otherwise, 2 when the check could not run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The tests added for this check (each kills a mutant the rest of the suite let through), kept in the files of
# the code they test.
KILL_DROPOUT = "tests/training/test_training.py::test_query_dropout_is_inverted_dropout_with_rate_p"
KILL_STORE_ROWS = "tests/features/test_store.py::test_store_batch_returns_the_requested_rows"
KILL_NESTED_META = "tests/features/test_store.py::test_store_with_a_nested_field_the_request_lacks_is_refused"
KILL_FORMAT_VERSION = "tests/features/test_store.py::test_format_version_is_checked_even_when_not_asked_for"
KILL_TESTS = (KILL_DROPOUT, KILL_STORE_ROWS, KILL_NESTED_META, KILL_FORMAT_VERSION)
PYTEST_OPTIONS = ("-x", "-q", "-p", "no:cacheprovider")

# Test files (or node ids) grouped by what they exercise; a mutant lists the ones that should catch it, most
# likely killer first (pytest runs them in that order and stops at the first failure).
QUERY_PATH = "tests/backbone/test_query_path.py"
TRAINING = "tests/training/test_training.py"
TRAINING_REFERENCE = "tests/training/test_reference.py"
STORE = "tests/features/test_store.py"
PROTOCOL_STORES = "tests/protocol/test_stores.py"
SWEEP_RESUME = "tests/protocol/test_sweep_resume.py"
METHODS = "tests/methods/test_methods.py"
LOW_PRECISION = "tests/backbone/test_low_precision.py"


@dataclass(frozen=True)
class Mutant:
    """One planted bug: `original` (exactly once in `path`) replaced by `replacement`."""

    name: str
    path: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]
    equivalent: str | None = None  # why the change cannot be observed: the mutant is expected to survive
    origin: str = "core"  # "review": one of the five mutants named by the review; "sentinel": the shadowing check


QP = "src/vqt/backbone/query_path.py"
RECIPE = "src/vqt/training/recipe.py"
GRID = "src/vqt/training/grid.py"
LOOP = "src/vqt/training/loop.py"
STORE_PY = "src/vqt/features/store.py"
EXTRACT = "src/vqt/features/extract.py"
VQT_PY = "src/vqt/methods/vqt.py"
SWEEP = "src/vqt/protocol/sweep.py"
MODELS = "src/vqt/protocol/fitting.py"
DATA = "src/vqt/protocol/stores.py"

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- the shadowing check
    Mutant(
        "sentinel_import_error", QP,
        'Form = Literal["auto", "absorbed", "recompute"]',
        'raise RuntimeError("planted mutant: vqt.backbone.query_path fails at import")',
        "query_path raises at import (proves the export's src shadows the editable install)",
        (QUERY_PATH,), origin="sentinel",
    ),
    # ---------------------------------------------------------------- the five from the review
    Mutant(
        "extract_store_files_without_complete", EXTRACT,
        "STORE_FILES = (COMPLETE_FILE, PROGRESS_FILE,",
        "STORE_FILES = (PROGRESS_FILE,",
        "COMPLETE removed from STORE_FILES: an overwrite keeps the old store's completion marker",
        (STORE, PROTOCOL_STORES), origin="review",
    ),
    Mutant(
        "extract_resume_skips_meta_check", EXTRACT,
        "            check_meta(read_meta(out), expect, out)\n",
        "            check_meta(read_meta(out), expect if is_complete(out) else {}, out)\n",
        "metadata checked only for complete stores: a half-written store of another request is resumed",
        (STORE, PROTOCOL_STORES), origin="review",
    ),
    Mutant(
        "sweep_chunk_any_done", SWEEP,
        'if self.committed(dirs, ctx.tdir):\n                continue\n'
        '            claim = self.claims.claim(',
        'if any(unit_done(d) for d in dirs):\n                continue\n'
        '            claim = self.claims.claim(',
        "grid and seed phases (one chunk loop): a chunk is skipped on resume when any (not all) of its units "
        "committed",
        (SWEEP_RESUME, "tests/protocol/test_end_to_end.py::test_killed_sweep_resumes"), origin="review",
    ),
    Mutant(
        "fit_head_weight_decay_zero", MODELS,
        "return fit_epochs(head, make_optimizer(model, recipe), recipe,",
        "return fit_epochs(head, make_optimizer(model, recipe.replace(weight_decay=0.0)), recipe,",
        "head-only trainer (linear, Head2Toe) forces weight decay 0",
        (TRAINING_REFERENCE,), origin="review",
    ),
    Mutant(
        "trainval_parts_unchecked", DATA,
        "store = open_store(task_dir / split, requests.expect(task, split, part_images))",
        "store = open_store(task_dir / split)",
        "train800val200 assembled from train800/val200 opened without the request's metadata",
        (PROTOCOL_STORES,), origin="review",
    ),
    # ---------------------------------------------------------------- protocol data: a stronger variant
    Mutant(
        "trainval_parts_and_result_unchecked", DATA,
        "    store = open_store(task_dir / split, requests.expect(task, split, part_images))\n",
        "    store = open_store(task_dir / split)\n            expect = None\n",
        "train800val200: neither the parts nor the assembled store are checked against the request",
        (PROTOCOL_STORES,),
    ),
    # ---------------------------------------------------------------- the query path
    Mutant(
        "qp_no_scale_norm", QP,
        "out = attn.norm(out.transpose(1, 2).reshape(batch, num_queries, attn.attn_dim))",
        "out = out.transpose(1, 2).reshape(batch, num_queries, attn.attn_dim)",
        "the attention's scale-norm (`attn.norm`) is skipped",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_no_gate", QP,
        "out = out * attn.gate(normed).sigmoid()",
        "out = out",
        "the attention gate is skipped",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_no_ls1", QP,
        "block.drop_path1(block.ls1(out))",
        "block.drop_path1(out)",
        "LayerScale ls1 (attention branch) is skipped",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_no_ls2", QP,
        "block.drop_path2(block.ls2(block.mlp(block.norm2(hidden))))",
        "block.drop_path2(block.mlp(block.norm2(hidden)))",
        "LayerScale ls2 (MLP branch) is skipped",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_no_attention_residual", QP,
        "hidden = queries + block.drop_path1(block.ls1(out))",
        "hidden = block.drop_path1(block.ls1(out))",
        "the residual connection around the attention is dropped",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_absorbed_no_value_bias", QP,
        "out = out + attn.qkv.bias[2 * width :].view(1, heads, 1, head_dim)",
        "out = out",
        "absorbed form: the value bias b_v is not added",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_absorbed_values_from_key_weights", QP,
        "w_v = attn.qkv.weight[2 * width :].view(heads, head_dim, dim)",
        "w_v = attn.qkv.weight[width : 2 * width].view(heads, head_dim, dim)",
        "absorbed form: values projected with the key weights",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_recompute_softmax_wrong_axis", QP,
        "weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)",
        "weights = (q @ k.transpose(-2, -1)).softmax(dim=-2)",
        "recompute form: softmax over the queries instead of the tokens",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_absorbed_softmax_wrong_axis", QP,
        "weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)",
        "weights = (q @ k.transpose(-2, -1)).softmax(dim=-2)",
        "explicit attention (the absorbed form, and any form asked for its weights): softmax over the queries "
        "instead of the tokens",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_no_attn_scale", QP,
        "return attn.q_norm(q) * attn.scale",
        "return attn.q_norm(q)",
        "queries not multiplied by attn.scale (1/sqrt(head_dim))",
        (QUERY_PATH,),
    ),
    Mutant(
        "qp_tokens_not_cast", QP,
        "queries, tokens = queries.to(dtype), tokens.to(low or dtype)",
        "queries, tokens = queries.to(dtype), tokens",
        "stored fp16/bf16 tokens are not cast to the block's dtype",
        (TRAINING_REFERENCE, LOW_PRECISION, QUERY_PATH),
    ),
    # ---------------------------------------------------------------- the recipe
    Mutant(
        "recipe_warmup_off_by_one", RECIPE,
        "return epoch / max(1, warmup_epochs)",
        "return (epoch + 1) / max(1, warmup_epochs)",
        "warm-up one epoch ahead (epoch 0 no longer at lr 0)",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "recipe_cosine_wrong_end", RECIPE,
        "return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))",
        "return max(0.0, 0.5 * (1.0 + math.cos(0.5 * math.pi * progress)))",
        "quarter instead of half cosine: the schedule ends at 0.5x the peak, not 0",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "recipe_cosine_clamp_removed", RECIPE,
        "return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))",
        "return 0.5 * (1.0 + math.cos(math.pi * progress))",
        "the clamp of the cosine factor at 0 is removed",
        (TRAINING, TRAINING_REFERENCE),
        equivalent="1 + cos(x) >= 0 for every x, and math.cos(pi * progress) >= -1 in floating point too, so "
        "max(0.0, .) never changes the value (progress is in [0, 1) for the epochs a recipe runs anyway).",
    ),
    Mutant(
        "recipe_warmup_guard_removed", RECIPE,
        "return epoch / max(1, warmup_epochs)",
        "return epoch / warmup_epochs",
        "the max(1, .) guard of the warm-up division is removed",
        (TRAINING, TRAINING_REFERENCE),
        equivalent="the division only runs when epoch < warmup_epochs, and epochs are >= 0, so warmup_epochs >= 1 "
        "there and max(1, warmup_epochs) == warmup_epochs; with no warm-up the branch is never taken.",
    ),
    Mutant(
        "recipe_no_batch_lr_scaling", RECIPE,
        "return lr * batch_size / REFERENCE_BATCH if scale else lr",
        "return lr",
        "the lr is not scaled by batch/256",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "recipe_head_bias_decayed", RECIPE,
        "(exempt if parameter is head_bias and not head_bias_decay else decayed).append(parameter)",
        "decayed.append(parameter)",
        "single-model optimizer decays the head bias",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "recipe_dropout_not_rescaled", RECIPE,
        "return x * keep / (1.0 - p)",
        "return x * keep",
        "query dropout keeps x instead of x / (1 - p) (not inverted dropout)",
        (TRAINING, TRAINING_REFERENCE, KILL_DROPOUT),
    ),
    Mutant(
        "recipe_dropout_keep_prob_swapped", RECIPE,
        "keep = torch.empty(shape, dtype=like.dtype).bernoulli_(1.0 - p, generator=generator)",
        "keep = torch.empty(shape, dtype=like.dtype).bernoulli_(p, generator=generator)",
        "query dropout keeps an entry with probability p instead of 1 - p",
        (TRAINING, TRAINING_REFERENCE, KILL_DROPOUT),
    ),
    Mutant(
        "cached_lr_one_epoch_late", LOOP,
        "lr = lr_at_epoch(recipe, epoch)",
        "lr = lr_at_epoch(recipe, epoch + 1)",
        "the shared training loop uses the next epoch's lr",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "cached_partial_batch_dropped", LOOP,
        "if recipe.drop_last and batches and len(batches[-1]) < recipe.batch_size:",
        "if batches and len(batches[-1]) < recipe.batch_size:",
        "every trainer drops the last partial batch (the official loader keeps it)",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "cached_order_ignores_data_seed", LOOP,
        "generator = order_generator(recipe.order_seed)",
        "generator = order_generator(recipe.seed)",
        "the shared training loop orders the images by the init seed, ignoring data_seed",
        (TRAINING, TRAINING_REFERENCE),
    ),
    # ---------------------------------------------------------------- the grid
    Mutant(
        "grid_adam_no_bias_correction1", GRID,
        "correction1 = 1 - beta1**self.steps",
        "correction1 = 1",
        "BatchedAdam: first-moment bias correction dropped",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "grid_adam_correction2_without_sqrt", GRID,
        "correction2_sqrt = (1 - beta2**self.steps) ** 0.5",
        "correction2_sqrt = 1 - beta2**self.steps",
        "BatchedAdam: second-moment bias correction without the square root",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "grid_head_bias_decayed", GRID,
        "exempt = p is grid.head_bias and not recipe.head_bias_decay",
        "exempt = False",
        "grid: weight decay applied to the head bias",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "grid_lr_of_another_config", GRID,
        "[scaled_lr(c.lr, recipe.batch_size, recipe.scale_lr) for c in grid.configs]",
        "[scaled_lr(c.lr, recipe.batch_size, recipe.scale_lr) for c in reversed(grid.configs)]",
        "grid: each configuration trains with another configuration's lr",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "grid_decay_of_another_config", GRID,
        "decay = torch.tensor([c.weight_decay for c in grid.configs]",
        "decay = torch.tensor([c.weight_decay for c in reversed(grid.configs)]",
        "grid: each configuration trains with another configuration's weight decay",
        (TRAINING, TRAINING_REFERENCE),
    ),
    Mutant(
        "grid_shared_dropout_generator", GRID,
        "self.generators = [dropout_generator(config.seed) for config in self.configs]",
        "self.generators = [dropout_generator(self.configs[0].seed)] * len(self.configs)",
        "grid: one dropout generator shared by every configuration",
        (TRAINING,),
    ),
    Mutant(
        "grid_init_ignores_seed", GRID,
        "            seed_init(template, config.seed)\n",
        "            seed_init(template, self.configs[0].seed)\n",
        "grid: every configuration initialised from the first configuration's seed",
        (TRAINING, TRAINING_REFERENCE),
    ),
    # ---------------------------------------------------------------- the feature store
    Mutant(
        "store_contiguous_run_off_by_one", STORE_PY,
        "rows = slice(int(index[0]), int(index[-1]) + 1)",
        "rows = slice(int(index[0]), int(index[-1]))",
        "contiguous-run fast path reads one row too few",
        (STORE, TRAINING),
    ),
    Mutant(
        "store_sorted_run_taken_as_contiguous", STORE_PY,
        "if index.size and np.all(np.diff(index) == 1):",
        "if index.size and np.all(np.diff(index) >= 1):",
        "any increasing index list (e.g. [1, 3, 4]) takes the contiguous fast path",
        (STORE, TRAINING, KILL_STORE_ROWS),
    ),
    Mutant(
        "store_bf16_bits_read_as_fp16", STORE_PY,
        "tensor = tensor.view(torch.int16).view(torch.bfloat16)",
        "tensor = tensor.view(torch.int16).view(torch.float16)",
        "bf16 store: the raw bits are viewed as fp16",
        (STORE, TRAINING_REFERENCE),
    ),
    Mutant(
        "store_check_meta_ignores_nested_keys", STORE_PY,
        "        return found\n",
        "        return []\n",
        "check_meta: differences inside nested dicts (architecture, transform, dataset) are not reported",
        (STORE, PROTOCOL_STORES),
    ),
    Mutant(
        "store_check_meta_only_requested_nested_keys", STORE_PY,
        "for key in sorted(set(stored) | set(wanted)):",
        "for key in sorted(wanted):",
        "check_meta: nested keys the store has but the request lacks are not compared",
        (STORE, PROTOCOL_STORES, KILL_NESTED_META),
    ),
    Mutant(
        "store_format_version_not_always_checked", STORE_PY,
        '    wanted.setdefault("format_version", FORMAT_VERSION)\n',
        "",
        "check_meta: the format version is compared only when the caller asks for it",
        (STORE, PROTOCOL_STORES, KILL_FORMAT_VERSION),
    ),
    # ---------------------------------------------------------------- the head's features
    Mutant(
        "vqt_pieces_normalised_jointly", VQT_PY,
        "    normalised = [F.normalize(pre_logits, dim=-1, eps=1e-12).expand(*lead, -1)]\n"
        "    normalised += [F.normalize(piece.to(pre_logits.dtype), dim=-1, eps=1e-12) for piece in pieces]\n"
        "    return torch.cat(normalised, dim=-1)\n",
        "    joint = [pre_logits.expand(*lead, -1)] + [piece.to(pre_logits.dtype) for piece in pieces]\n"
        "    return F.normalize(torch.cat(joint, dim=-1), dim=-1, eps=1e-12)\n",
        "combine_features: one normalisation of the whole vector instead of one per piece",
        (QUERY_PATH, METHODS),
    ),
    Mutant(
        "vqt_concat_normalised_per_token", VQT_PY,
        'pieces.append(out.flatten(-2))',
        'pieces.append(F.normalize(out, dim=-1).flatten(-2))',
        "combine_features: with Q > 1 each query token normalised on its own before the joint normalisation",
        (QUERY_PATH, METHODS),
    ),
)


# ---------------------------------------------------------------------------------------------- machinery


@dataclass
class Outcome:
    mutant: Mutant
    result: str  # killed | survived | timeout | error
    first_failure: str = ""
    seconds: float = 0.0
    tests_run: tuple[str, ...] = ()
    missing_tests: tuple[str, ...] = ()
    output_tail: str = ""
    notes: list[str] = field(default_factory=list)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def export_head(target: Path) -> None:
    """`git archive HEAD | tar -x -C target`: the committed tree, never the working tree."""
    archive = subprocess.Popen(["git", "archive", "HEAD"], cwd=REPO, stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, capture_output=True)
    archive.stdout.close()  # type: ignore[union-attr]
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"exporting HEAD failed: {untar.stderr.decode(errors='replace')}")


def apply(text: str, mutant: Mutant) -> str:
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.name}: its original text occurs {count} times in {mutant.path} (must be exactly once); "
            f"update the mutant list to the code:\n{mutant.original!r}"
        )
    return text.replace(mutant.original, mutant.replacement)


def test_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def purge_bytecode(root: Path) -> None:
    for cache in (root / "src").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def existing(root: Path, tests: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tests whose files exist in the export, and those that do not (e.g. not committed yet)."""
    present, missing = [], []
    for test in tests:
        (present if (root / test.split("::")[0]).is_file() else missing).append(test)
    return tuple(dict.fromkeys(present)), tuple(dict.fromkeys(missing))


FAILURE_LINE = re.compile(r"^(FAILED|ERROR) (\S+(?: \S+)*?)(?: - .*)?$", re.MULTILINE)
SUMMARY_MARK = "short test summary info"


def run_pytest(root: Path, tests: tuple[str, ...], basetemp: Path, timeout: float) -> tuple[str, str, float, str]:
    """(result, first failing test, seconds, output tail) of the tests on the export as it is now."""
    purge_bytecode(root)
    basetemp.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", *tests, *PYTEST_OPTIONS, f"--basetemp={basetemp}"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=test_env(root), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        out = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) else (
            expired.stdout or "")
        return "timeout", "", time.monotonic() - started, out[-3000:]
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    summary = output.rsplit(SUMMARY_MARK, 1)[-1]  # the short summary lists what failed, in order
    match = FAILURE_LINE.search(summary)
    first = match.group(2) if match else ""
    if done.returncode == 0:
        return "survived", "", seconds, output[-3000:]
    if done.returncode in (1, 2):  # tests failed / collection or import error
        return "killed", first or "(see output)", seconds, output[-3000:]
    return "error", first, seconds, output[-3000:]  # 3 internal error, 4 usage, 5 no tests collected


def check_shadowing(root: Path) -> str:
    """`import vqt` from the export's src, not from the editable install."""
    done = subprocess.run([sys.executable, "-c", "import vqt; print(vqt.__file__)"], cwd=root, env=test_env(root),
                          capture_output=True, text=True)
    location = done.stdout.strip()
    if done.returncode != 0 or not Path(location).resolve().is_relative_to(root.resolve() / "src"):
        raise SystemExit(f"the export does not shadow the installed package: import vqt -> {location!r} "
                         f"{done.stderr[-2000:]}")
    return location


def select(only: list[str]) -> list[Mutant]:
    if not only:
        return list(MUTANTS)
    names = {n.strip() for item in only for n in item.split(",") if n.strip()}
    unknown = names - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutants: {', '.join(sorted(unknown))}")
    # The sentinel always runs: without it a result could come from the installed package.
    return [m for m in MUTANTS if m.name in names or m.origin == "sentinel"]


# ---------------------------------------------------------------------------------------------- the report


def verdict(outcome: Outcome) -> str:
    m = outcome.mutant
    if m.origin == "sentinel":
        return "ok (shadowing works)" if outcome.result == "killed" else "NOT KILLED: results invalid"
    if outcome.result in ("killed", "timeout"):
        if m.equivalent:
            return "killed, but marked equivalent: the reason is stale"
        if outcome.first_failure.startswith(KILL_TESTS):
            return "killed by a test added for this check"
        return "killed"
    if outcome.result == "survived":
        return "equivalent (reason below)" if m.equivalent else "SURVIVED: unexplained"
    return "ERROR: pytest could not run the tests"


def acceptable(outcome: Outcome) -> bool:
    m = outcome.mutant
    if m.origin == "sentinel":
        return outcome.result == "killed"
    if outcome.result == "survived":
        return m.equivalent is not None
    return outcome.result in ("killed", "timeout")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report(outcomes: list[Outcome], info: dict[str, str]) -> str:
    counted = [o for o in outcomes if o.mutant.origin != "sentinel"]
    killed = sum(o.result == "killed" for o in counted)
    timeouts = sum(o.result == "timeout" for o in counted)
    survived = [o for o in counted if o.result == "survived"]
    errors = sum(o.result == "error" for o in counted)
    by_added = [o for o in counted if o.result == "killed" and o.first_failure.startswith(KILL_TESTS)]
    lines = [
        "# Mutation check of the core",
        "",
        "Generated by `tests/mutation_check.py` (do not edit by hand: change the mutant list there and re-run).",
        "Each mutant is a planted bug, applied as an exact text replacement to a copy of the committed tree; only",
        "the tests chosen for that mutant run (`pytest -x -q -p no:cacheprovider`), with the copy's `src` first on",
        "`PYTHONPATH`. A mutant is *killed* when those tests fail.",
        "",
        f"- Command: `{info['command']}`",
        f"- Date: {info['date']}",
        f"- Commit: `{info['commit']}` ({info['subject']})",
        f"- Machine: {info['machine']}",
        f"- Python {info['python']}, torch {info['torch']}, pytest {info['pytest']}",
        f"- Wall time: {info['wall']} (baseline of the targeted tests: {info['baseline']})",
        f"- Shadowing: `import vqt` -> `{info['import']}`; sentinel mutant `sentinel_import_error` "
        f"{'killed' if info['sentinel'] == 'killed' else 'NOT killed'}",
    ]
    if info.get("overlay"):
        lines.append(f"- Overlaid from the working tree (not committed when this ran): {info['overlay']}")
    if info.get("missing"):
        lines.append(f"- Listed tests absent from this commit (skipped): {info['missing']}")
    lines += [
        "",
        "## Summary",
        "",
        f"{len(counted)} mutants: {killed} killed, {timeouts} timed out, {len(survived)} survived "
        f"({sum(o.mutant.equivalent is not None for o in survived)} explained as equivalent, "
        f"{sum(o.mutant.equivalent is None for o in survived)} unexplained), {errors} errors. "
        f"{len(by_added)} of the kills come from tests added for this check (KILL_TESTS in tests/mutation_check.py).",
        "",
        "## Mutants",
        "",
        "| # | mutant | file | what it changes | result | first failing test | s | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, o in enumerate(outcomes):
        m = o.mutant
        name = f"`{m.name}`" + (" (review)" if m.origin == "review" else "")
        lines.append(
            f"| {index} | {name} | `{m.path.removeprefix('src/vqt/')}` | {cell(m.description)} | {o.result} | "
            f"{cell(o.first_failure) or '-'} | {o.seconds:.0f} | {cell(verdict(o))} |"
        )
    lines += ["", "## Survivors", ""]
    if not survived:
        lines.append("None: every mutant is killed.")
    for o in survived:
        m = o.mutant
        reason = m.equivalent or "no reason recorded: a gap in the tests (add a killing test or a reason)"
        lines.append(f"- `{m.name}` ({m.path}): {cell(reason)}")
    if by_added:
        lines += ["", "## Killed only by the tests added for this check", ""]
        lines.append("These mutants survived the project's existing targeted tests; a test in "
                     "the project now kills each (kept in the file of the code it tests):")
        lines.append("")
        for o in by_added:
            lines.append(f"- `{o.mutant.name}`: {cell(o.first_failure)}")
    lines += ["", "## Tests run per mutant", ""]
    for o in outcomes:
        lines.append(f"- `{o.mutant.name}`: {', '.join(f'`{t}`' for t in o.tests_run) or '(none)'}")
    lines += ["", "## The mutations (exact text replaced in the committed file)", ""]
    for o in outcomes:
        m = o.mutant
        lines += [f"`{m.name}` in `{m.path}`:", "", "```diff"]
        lines += [f"-{line}" for line in m.original.strip("\n").splitlines()]
        lines += [f"+{line}" for line in m.replacement.strip("\n").splitlines()] or ["+"]
        lines += ["```", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="mutant name(s), comma separated")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per mutant (default 240)")
    parser.add_argument("--overlay", action="append", default=[],
                        help="copy this working-tree file under tests/ into the export (repeatable)")
    parser.add_argument("--check", action="store_true", help="only check that every mutant applies")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the exported tree (its path is printed)")
    args = parser.parse_args(argv)

    if args.list:
        for m in MUTANTS:
            print(f"{m.name:45s} {m.path:35s} {m.description}")
        return 0
    mutants = select(args.only)
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate mutant names")

    started = time.monotonic()
    commit, subject = git("rev-parse", "HEAD"), git("log", "-1", "--format=%s")
    workdir = Path(tempfile.mkdtemp(prefix="vqt-mutation-"))
    root = workdir / "tree"
    root.mkdir()
    try:
        export_head(root)
        for path in args.overlay:
            relative = Path(path)
            if relative.is_absolute() or relative.parts[0] != "tests" or ".." in relative.parts:
                raise SystemExit(f"--overlay takes a path under tests/, got {path}")
            shutil.copyfile(REPO / relative, root / relative)
        pristine = {m.path: (root / m.path).read_text() for m in mutants}
        mutated = {m.name: apply(pristine[m.path], m) for m in mutants}  # every mutant checked before any runs
        if args.check:
            print(f"{len(mutants)} mutants apply to {commit[:12]}")
            return 0
        location = check_shadowing(root)
        all_tests, all_missing = existing(root, tuple(t for m in mutants for t in m.tests))
        print(f"baseline: {len(all_tests)} test files/ids on the unmutated export {commit[:12]} ...", flush=True)
        result, first, seconds, tail = run_pytest(root, all_tests, workdir / "basetemp" / "baseline",
                                                  max(args.timeout, 900.0))
        if result != "survived":
            print(tail, file=sys.stderr)
            raise SystemExit(f"the targeted tests are not green on the unmutated tree ({result}, first: {first}); "
                             "a red baseline would make every mutant look killed")
        baseline = f"{seconds:.0f} s"
        print(f"baseline green in {seconds:.0f} s", flush=True)

        outcomes = []
        for index, mutant in enumerate(mutants):
            for path, text in pristine.items():
                (root / path).write_text(text)
            (root / mutant.path).write_text(mutated[mutant.name])
            tests, missing = existing(root, mutant.tests)
            if not tests:
                outcome = Outcome(mutant, "error", "no listed test exists in this commit", missing_tests=missing)
            else:
                result, first, seconds, tail = run_pytest(root, tests, workdir / "basetemp" / mutant.name,
                                                          args.timeout)
                outcome = Outcome(mutant, result, first, seconds, tests, missing, tail)
            outcomes.append(outcome)
            print(f"[{index + 1}/{len(mutants)}] {mutant.name}: {outcome.result} {outcome.first_failure} "
                  f"({outcome.seconds:.0f} s)", flush=True)
            if mutant.origin == "sentinel" and outcome.result != "killed":
                print(outcome.output_tail, file=sys.stderr)
                raise SystemExit("the sentinel mutant (raises at import) was not killed: the tests do not run "
                                 "the exported copy, so no result of this check would mean anything")
            if outcome.result == "error":
                print(outcome.output_tail, file=sys.stderr)
        for path, text in pristine.items():
            (root / path).write_text(text)

        wall = time.monotonic() - started
        import pytest as _pytest
        import torch as _torch

        sentinel = next((o.result for o in outcomes if o.mutant.origin == "sentinel"), "not run")
        info = {
            "command": " ".join(["python3", "tests/mutation_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "commit": commit,
            "subject": subject,
            "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPU cores (shared), no GPU used",
            "python": platform.python_version(),
            "torch": _torch.__version__,
            "pytest": _pytest.__version__,
            "wall": f"{wall / 60:.1f} min",
            "baseline": baseline,
            "import": location.replace(str(root), "<export>"),
            "sentinel": sentinel,
            "overlay": ", ".join(args.overlay),
            "missing": ", ".join(all_missing),
        }
        text = report(outcomes, info)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
            print(f"report written to {args.out}")
        else:
            print(text)
        bad = [o for o in outcomes if not acceptable(o)]
        for o in bad:
            print(f"not acceptable: {o.mutant.name}: {verdict(o)}", file=sys.stderr)
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
