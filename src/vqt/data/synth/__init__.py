"""Built-in structured tasks, generated deterministically from a seed and written in the VTAB-1k list format.

VTAB's Structured group is where intermediate features matter most, and its real data sets are large downloads;
these stand-ins are made in seconds with numpy/PIL. Each image is drawn from its own random stream
(seed, task, split, index), so the first N images of a split do not depend on how many are generated, and the
same seed gives byte-identical files.
"""

from vqt.data.synth.tasks import (
    SYNTH_TASKS,
    SynthTask,
    get_synth_task,
    label_from_params,
    resolve_synth_tasks,
)
from vqt.data.synth.writer import METADATA_FILE, TASK_FILE, generate_task, image_rng

__all__ = [
    "METADATA_FILE",
    "SYNTH_TASKS",
    "TASK_FILE",
    "SynthTask",
    "generate_task",
    "get_synth_task",
    "image_rng",
    "label_from_params",
    "resolve_synth_tasks",
]
