"""The documentation site: every public name is documented in the API reference, and `mkdocs build --strict`
passes (when the docs requirements, docs/requirements.txt, are installed)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import logging
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import vqt

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "docs" / "api"
DIRECTIVE = re.compile(r"^::: *([\w.]+) *$", re.MULTILINE)
DOCS_REQUIREMENTS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def api_directives() -> dict[str, str]:
    """`::: path` blocks of the API pages -> the page that holds them."""
    found: dict[str, str] = {}
    for page in sorted(API_DIR.glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            found[path] = page.name
    return found


def public_objects() -> dict[str, object]:
    """The classes and functions of `vqt.__all__` (a plain value there, e.g. a version string, has no docstring
    or defining module of its own: `test_public_values_are_mentioned` covers those)."""
    objects = {name: getattr(vqt, name) for name in vqt.__all__}
    return {name: obj for name, obj in objects.items() if inspect.isclass(obj) or callable(obj)}


def qualified(name: str, obj: object) -> str:
    return f"{obj.__module__}.{name}"


def own_doc(obj: object) -> str:
    """The object's own docstring (a class does not count its base's)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return (doc or "").strip()


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name, obj in public_objects().items() if not own_doc(obj)]
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_name_is_in_the_api_reference() -> None:
    directives = api_directives()
    missing = [
        f"{name} (expected `::: {qualified(name, obj)}`)"
        for name, obj in public_objects().items()
        if qualified(name, obj) not in directives
    ]
    assert not missing, f"vqt.__all__ names missing from docs/api/*.md: {missing}"
    index = (API_DIR / "index.md").read_text(encoding="utf-8")
    unlisted = [name for name in public_objects() if f"[`{name}`]" not in index]
    assert not unlisted, f"names missing from the table of docs/api/index.md: {unlisted}"


def test_public_values_are_mentioned() -> None:
    index = (API_DIR / "index.md").read_text(encoding="utf-8")
    values = [name for name in vqt.__all__ if name not in public_objects()]
    unmentioned = [name for name in values if f"vqt.{name}" not in index]
    assert not unmentioned, f"public values not described in docs/api/index.md: {unmentioned}"


def test_api_reference_blocks_name_real_objects() -> None:
    for path in api_directives():
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), f"docs/api: ::: {path} does not exist"


def _public_members(cls: type) -> dict[str, object]:
    members = {}
    for key, value in vars(cls).items():
        if key.startswith("_"):
            continue
        if isinstance(value, property):
            members[key] = value.fget
        elif isinstance(value, (staticmethod, classmethod)):
            members[key] = value.__func__
        elif inspect.isfunction(value) or hasattr(value, "func"):  # functions, functools.cached_property
            members[key] = getattr(value, "func", value)
    return members


def test_public_members_of_public_classes_are_documented() -> None:
    """The site hides undocumented members (show_if_no_docstring: false), so each needs a docstring; dataclass
    fields are documented in the class docstring's `Attributes:` section."""
    missing = []
    for name, obj in public_objects().items():
        if not inspect.isclass(obj):
            continue
        missing += [f"{name}.{key}" for key, member in _public_members(obj).items() if not own_doc(member)]
        if dataclasses.is_dataclass(obj):
            attributes = own_doc(obj).partition("Attributes:")[2]
            missing += [
                f"{name}.{field.name} (Attributes: section)"
                for field in dataclasses.fields(obj)
                if not re.search(rf"^\s+{field.name}:", attributes, re.MULTILINE)
            ]
    assert not missing, f"undocumented public members: {missing}"


def _docs_requirements_missing() -> list[str]:
    return [name for name in DOCS_REQUIREMENTS if importlib.util.find_spec(name.split(".")[0]) is None
            or importlib.util.find_spec(name) is None]


def _hook():
    spec = importlib.util.spec_from_file_location("vqt_docs_hook", ROOT / "docs" / "hooks" / "vqt_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(bool(_docs_requirements_missing()), reason="docs requirements not installed "
                    "(pip install -r docs/requirements.txt)")
def test_links_that_leave_docs_point_at_the_site(caplog) -> None:
    hook = _hook()
    mirrored = {"benchmarks/results/memory_cpu.md"}
    page = "[r](../benchmarks/results/memory_cpu.md#top) [d](design.md) [w](https://example.org/x.md)"
    assert hook.rewrite_links(page, "docs", "demo.md", mirrored, "demo.md") == (
        "[r](benchmarks/results/memory_cpu.md#top) [d](design.md) [w](https://example.org/x.md)"
    )
    readme = "[a](docs/design.md) ![p](docs/viz/a.png) [r](benchmarks/results/memory_cpu.md) [h](README.md)"
    assert hook.rewrite_links(readme, "", "api/index.md", mirrored, "README.md") == (
        "[a](../design.md) ![p](../viz/a.png) [r](../benchmarks/results/memory_cpu.md) [h](../index.md)"
    )
    with caplog.at_level(logging.WARNING):
        hook.rewrite_links("[t](tests/test_docs.py)", "", "index.md", mirrored, "README.md")
    assert "the site does not have" in caplog.text  # a warning: `mkdocs build --strict` fails on it


@pytest.mark.skipif(bool(_docs_requirements_missing()), reason="docs requirements not installed "
                    "(pip install -r docs/requirements.txt)")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every public name was rendered by mkdocstrings (its inventory lists what the API pages document).
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    rendered = {line.split(" ", 1)[0] for line in body.splitlines()}
    missing = [qualified(n, o) for n, o in public_objects().items() if qualified(n, o) not in rendered]
    assert not missing, f"not rendered in the API reference: {missing}"
    # The CLI reference was generated from the parsers: every sub-command and its options are there.
    cli = (site / "cli.html").read_text(encoding="utf-8")
    for anchor, option in (("vqt-train", "--data-root"), ("vqt-sweep", "--tasks"), ("vqt-bench-memory", "--methods"),
                           ("vqt-viz-attention", "--columns"), ("vqt-data-synth", "--size")):
        assert f'id="{anchor}"' in cli and option in cli, (anchor, option)
    assert (site / "benchmarks" / "results" / "memory_cpu.html").is_file()
