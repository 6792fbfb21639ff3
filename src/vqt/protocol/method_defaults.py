"""Each method's default lr x weight-decay grid for `vqt sweep` (used when no `--lrs` / `--wds` is given).

Every method trains with this repository's one recipe (`vqt.training.recipe`: Adam with coupled L2 decay, warm-up +
cosine, lr multiplied by batch/256); only the grids differ. Where a method's official code uses another optimiser
(VPT: SGD with momentum; full fine-tuning in VPT's code and LoRA/adapters in NOAH's: AdamW) the difference is stated
in `source` and in docs/protocol.md ("Per-method grids and recipes"); the recipe is not changed. Values are the
*unscaled* lrs of the grid, as for VQT: the rate used is `lr * batch_size / 256`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqt.methods.registry import get_method
from vqt.training.recipe import LR_GRID, WD_GRID


@dataclass(frozen=True)
class MethodGrid:
    """A method's default grid and where it comes from (`sure`: False where the source is our own adaptation)."""

    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    source: str
    sure: bool = True


_VQT = MethodGrid(LR_GRID, WD_GRID, "VQT official scripts (andytu28/VQT): Adam, lr x batch/256")
_FULL_WD = (0.01, 1e-3, 1e-4, 0.0)

METHOD_GRIDS: dict[str, MethodGrid] = {
    "vqt": _VQT,
    "vqt-concat": _VQT,
    "linear": MethodGrid(LR_GRID, WD_GRID, "the VQT grid (the repository's linear-probing baseline shares the VQT "
                         "recipe; VPT's SGD grid for linear probing, {50 ... 0.05}, does not transfer to Adam)",
                         sure=False),
    "head2toe": MethodGrid(LR_GRID, WD_GRID, "the VQT grid (VQT's compression head uses it); Head2Toe's own "
                           "(JAX) search is not reproduced", sure=False),
    "finetune": MethodGrid(
        (0.005, 0.001, 5e-4, 1e-4), _FULL_WD,
        "VPT official code (KMnP/vpt tune_vtab.py, train_type 'finetune'; configs/base-finetune.yaml: AdamW, "
        "5 warm-up epochs), lr x batch/256 as there; we keep Adam with coupled decay and --warmup-epochs"),
    "vpt-shallow": MethodGrid(
        LR_GRID, WD_GRID,
        "VPT's own grid {50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05} x wd {0.01, 1e-3, 1e-4, 0} is for SGD "
        "(momentum 0.9; KMnP/vpt tune_vtab.py 'prompt', configs/base-prompt.yaml); with Adam we use the VQT grid "
        "(VQT's code is VPT's with Adam and these lrs)", sure=False),
    "bitfit": MethodGrid(
        (0.01, 0.005, 0.001, 5e-4), _FULL_WD,
        "no official VTAB-1k grid found; the range of NOAH's AdamW scripts for parameter-efficient modules "
        "(1e-3 ... 5e-3 at batch 64) widened to a grid", sure=False),
    "lora": MethodGrid(
        (0.02, 0.01, 0.002, 0.001), _FULL_WD,
        "NOAH official VTAB scripts (ZhangYuanhan-AI/NOAH configs/LoRA/VTAB): AdamW, lr 0.005 (also tried there: "
        "0.01, 0.001, 5e-4), wd 1e-4, batch 64, 100 epochs; here those four rates as the *used* rate at batch 128 "
        "(x2 before the batch/256 scaling) and the wd grid around NOAH's 1e-4"),
    "adaptformer": MethodGrid(
        (0.02, 0.01, 0.002, 0.001), _FULL_WD,
        "NOAH official VTAB scripts for the adapter baseline (configs/Adapter/VTAB: AdamW, lr 0.005, wd 1e-4, batch "
        "64), as for LoRA; AdaptFormer's own VTAB-1k settings not checked", sure=False),
}
METHOD_GRIDS["vpt-deep"] = METHOD_GRIDS["vpt-shallow"]


def method_grid(method: str) -> MethodGrid:
    """The default grid of `method`; a combination `vqt+X` uses X's grid (the adapter is the lr-sensitive part)."""
    name = get_method(method).name
    if name in METHOD_GRIDS:
        return METHOD_GRIDS[name]
    if name.startswith("vqt+"):
        base = METHOD_GRIDS[name[len("vqt+"):]]
        return MethodGrid(base.lrs, base.wds, f"the grid of {name[len('vqt+'):]} (no official grid for the "
                          f"combination; queries and adapter share one lr)", sure=False)
    return _VQT
