"""The built-in synthetic tasks: how each samples a scene, renders it and reads its label off the parameters."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from vqt.data.synth import clevr, dsprites
from vqt.errors import DataError

Params = dict[str, Any]


@dataclass(frozen=True)
class SynthTask:
    """A generator of (image, label) pairs whose label is a pure function of the stored scene parameters."""

    name: str
    description: str
    class_names: tuple[str, ...]
    sample: Callable[[np.random.Generator], Params]
    render: Callable[[Params, int], Image.Image]
    label: Callable[[Params], int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _bins(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}_{index:02d}" for index in range(count))


SYNTH_TASKS: dict[str, SynthTask] = {
    task.name: task
    for task in (
        SynthTask(
            "dsprites_ori",
            "white square/ellipse/heart on black; orientation (modulo the shape's symmetry) in 16 bins",
            _bins("orientation", dsprites.NUM_BINS),
            partial(dsprites.sample_params, factor="orientation"),
            dsprites.render,
            dsprites.orientation_label,
        ),
        SynthTask(
            "dsprites_loc",
            "white square/ellipse/heart on black; x-position of the centre in 16 bins",
            _bins("x", dsprites.NUM_BINS),
            partial(dsprites.sample_params, factor="x"),
            dsprites.render,
            dsprites.x_label,
        ),
        SynthTask(
            "clevr_count",
            "3-10 coloured spheres/cubes/cylinders on a shaded floor; number of objects (8 classes)",
            tuple(f"count_{count}" for count in range(clevr.COUNT_RANGE[0], clevr.COUNT_RANGE[1] + 1)),
            partial(clevr.sample_params, task="count"),
            clevr.render,
            clevr.count_label,
        ),
        SynthTask(
            "clevr_dist",
            "2-7 coloured objects on a shaded floor; depth of the nearest object in 6 log-spaced bins",
            _bins("depth", clevr.DIST_BINS),
            partial(clevr.sample_params, task="dist"),
            clevr.render,
            clevr.dist_label,
        ),
    )
}


def get_synth_task(name: str) -> SynthTask:
    key = name.strip().lower().replace("-", "_")
    if key in SYNTH_TASKS:
        return SYNTH_TASKS[key]
    close = difflib.get_close_matches(key, list(SYNTH_TASKS), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise DataError(f"unknown synthetic task {name!r}{hint} (built-in: {', '.join(SYNTH_TASKS)}, or 'all')")


def resolve_synth_tasks(spec: str) -> list[str]:
    """'all' or a comma list of built-in task names."""
    names: list[str] = []
    for part in (part.strip() for part in spec.split(",")):
        if not part:
            continue
        expanded = list(SYNTH_TASKS) if part.lower() == "all" else [get_synth_task(part).name]
        names.extend(name for name in expanded if name not in names)
    if not names:
        raise DataError(f"no synthetic task given (built-in: {', '.join(SYNTH_TASKS)}, or 'all')")
    return names


def label_from_params(task: str, params: Params) -> int:
    """Re-derive an image's label from its stored parameters (what the generator wrote, checked by the tests)."""
    return get_synth_task(task).label(params)
