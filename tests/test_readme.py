"""The README's Python quick-starts run as written (with a tiny random backbone instead of the offline DINOv2),
and `import vqt` exposes the public API lazily."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import vqt
from vqt.data.synth import generate_task

README = Path(__file__).resolve().parents[1] / "README.md"
# The one substitution: the quick-starts name the offline DINOv2-S/14; a tiny random ViT runs them in seconds.
BACKBONE = ("offline:dinov2_s14", "vit_tiny_patch16_224@random")

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_python_quick_starts_run(tmp_path: Path, monkeypatch) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2 and all("import vqt" in blocks[0] or "vqt." in b for b in blocks)
    monkeypatch.chdir(tmp_path)
    generate_task("dsprites_ori", tmp_path / "data", n_train=16, n_val=8, n_test=8, size=32)
    namespace: dict = {}
    for block in blocks:  # later blocks use the names of earlier ones, as a reader's session would
        exec(compile(block.replace(*BACKBONE), str(README), "exec"), namespace)
    assert (tmp_path / "my-adapter" / "adapter_config.json").is_file()
    assert len(namespace["grid"].configs) == 6 and namespace["best"].head.out_features == 16
    assert namespace["history"].final_val_accuracy is None and len(namespace["history"].train_loss) == 100


def test_public_api_is_complete_and_lazy() -> None:
    for name in vqt.__all__:
        assert getattr(vqt, name) is not None, name
    assert set(vqt.__all__) <= set(dir(vqt))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vqt.nope  # noqa: B018
    # `import vqt` (and so the `vqt` command's start) does not load torch until something needs it.
    code = "import sys, vqt; assert 'torch' not in sys.modules; vqt.Recipe; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
