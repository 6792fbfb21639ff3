"""MkDocs hook of the vqt site (`hooks:` in mkdocs.yml); everything it adds is made at build time.

- `cli.md`: the command-line reference, rendered from the argparse parsers (`vqt.cli.main.build_parser()`):
  every sub-command's `--help`, so the page cannot drift from the code.
- `benchmarks/results/**`: the repository's benchmark result files (Markdown and PNG), copied into the site at
  the same relative path they have in the repository, so links to them work from the README sections below.
- `<!-- readme: SECTION -->` in a page becomes that `## SECTION` of README.md (`intro`: the text before the
  first section), so the getting-started pages follow the README.
- `<!-- benchmark-results -->` becomes a list of the copied result files.
- A list that starts right after a paragraph line gets the blank line Python-Markdown needs (GitHub renders it as
  a list without one, so the sources are written that way).
- Links that leave docs/ (a page's `../benchmarks/results/x.md`, the README's `docs/design.md`) are pointed at
  the site's copy; a link to a repository file the site does not have fails the build (a warning under --strict).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.vqt_docs")

ROOT = Path(__file__).resolve().parents[2]  # the repository root (docs/hooks/ -> docs/ -> root)
README = ROOT / "README.md"
RESULTS_DIR = "benchmarks/results"  # mirrored into the site at the same path
MIRRORED_SUFFIXES = (".md", ".png", ".csv", ".json")
CLI_PAGE = "cli.md"
HELP_WIDTH = 76  # COLUMNS for argparse (it wraps at COLUMNS - 2): fits a code block at 1280 px with both sidebars

README_MARKER = re.compile(r"^<!-- readme: (.+?) -->[ \t]*$", re.MULTILINE)
RESULTS_MARKER = "<!-- benchmark-results -->"
LINK = re.compile(r"(!?\[[^\]\n]*\]\()([^)\s]+)(\))")
FENCE = re.compile(r"^(```|~~~)")
LIST_ITEM = re.compile(r"^\s*([-*+]\s+\S|1[.)]\s)")  # the items GitHub lets interrupt a paragraph


# ---------------------------------------------------------------------------------------------------------------
# CLI reference


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name) or ""


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("vqt",), summary: str = ""
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    yield path, parser, summary
    for name, sub, text in _subcommands(parser):
        yield from _walk(sub, (*path, name), text)


@contextlib.contextmanager
def _help_environment() -> Iterator[None]:
    """Fixed width, no colour: the same text whatever terminal runs `mkdocs build`."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    os.environ["NO_COLOR"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def render_cli() -> str:
    """The CLI reference page: a table of the commands, then each command's `--help`."""
    from vqt.cli.main import build_parser

    with _help_environment():
        parser = build_parser()
        commands = list(_walk(parser))
        for _path, command, _summary in commands:
            if hasattr(command, "color"):  # Python >= 3.14 colours help text on a terminal
                command.color = False
        lines = [
            "# Command line reference",
            "",
            "Every `vqt` command and its options, exactly as `vqt COMMAND --help` prints them: this page is",
            "generated from the argparse parsers (`vqt.cli.main.build_parser()`) each time the site is built.",
            "Errors a user can cause print one line `vqt: error: ...` and exit with status 2; `vqt --debug ...` shows",
            "the traceback instead. `train`, `sweep` and `extract` also read their options from a YAML file",
            "(`--config`); the command line wins.",
            "",
            "| command | what it does |",
            "|---|---|",
        ]
        for path, _command, summary in commands[1:]:
            name = " ".join(path)
            lines.append(f"| [`{name}`](#{_anchor(path)}) | {_cell(summary)} |")
        for path, command, _summary in commands:
            level = "##" if len(path) <= 2 else "###"  # `vqt bench memory` under `vqt bench`
            name = " ".join(path)
            lines += ["", f"{level} `{name}` {{#{_anchor(path)}}}", "", "```text", command.format_help().rstrip(),
                      "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# README sections and links that leave docs/


def readme_sections() -> dict[str, str]:
    """README.md split at its `## ` headings (outside code fences); `intro` is the text before the first one."""
    sections: dict[str, list[str]] = {"intro": []}
    current = "intro"
    fenced = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
            continue
        if not fenced and current == "intro" and line.startswith("# "):
            continue  # the README's title: the page has its own
        sections[current].append(line)
    return {name: "\n".join(body).strip("\n") for name, body in sections.items()}


def _site_path(repo_path: str, mirrored: set[str]) -> str | None:
    """Where a repository file lives in the site (a docs_dir-relative path), or None when the site lacks it."""
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/") :]
    if repo_path in mirrored:
        return repo_path
    if repo_path == "README.md":
        return "index.md"
    return None


def rewrite_links(markdown: str, base: str, page_uri: str, mirrored: set[str], where: str) -> str:
    """Point links whose target leaves docs/ at the site's copy.

    `base` is the repository folder the links are relative to ("docs/<page folder>" for a page, "" for README
    text); `page_uri` the page's docs_dir-relative path. Links inside docs/ and absolute URLs are left alone.
    """
    page_dir = posixpath.dirname(page_uri)
    out, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        if not fenced:
            line = LINK.sub(lambda m: _rewrite(m, base, page_dir, mirrored, where), line)
        out.append(line)
    return "\n".join(out)


def _rewrite(match: re.Match, base: str, page_dir: str, mirrored: set[str], where: str) -> str:
    target = match.group(2)
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
        return match.group(0)
    path, hash_, fragment = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join(base, path))
    if repo_path.startswith("docs/") and base.startswith("docs"):
        return match.group(0)  # an ordinary link between pages: MkDocs checks it
    site = _site_path(repo_path, mirrored)
    if site is None:
        log.warning("%s links to %r (%s in the repository), which the site does not have", where, target, repo_path)
        return match.group(0)
    return f"{match.group(1)}{posixpath.relpath(site, page_dir or '.')}{hash_}{fragment}{match.group(3)}"


def separate_lists(markdown: str) -> str:
    """Insert a blank line before a list that directly follows a paragraph line (outside code fences)."""
    out: list[str] = []
    fenced = in_list = False
    for line in markdown.split("\n"):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            if not line.strip():
                in_list = False
            elif LIST_ITEM.match(line) and not in_list:
                if out and out[-1].strip():
                    out.append("")
                in_list = True
        out.append(line)
    return "\n".join(out)


def results_list(mirrored: set[str]) -> str:
    pages = sorted(p for p in mirrored if p.endswith(".md"))
    return "\n".join(f"- [`{posixpath.basename(p)}`]({p})" for p in pages)


# ---------------------------------------------------------------------------------------------------------------
# hooks


def _mirrored() -> list[Path]:
    return sorted(p for p in (ROOT / RESULTS_DIR).rglob("*") if p.suffix in MIRRORED_SUFFIXES and p.is_file())


def _result_uri(path: Path) -> str:
    return f"{RESULTS_DIR}/{path.relative_to(ROOT / RESULTS_DIR).as_posix()}"


def _result_page(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    note = (
        f"*Copied from `{_result_uri(path)}` in the repository when the site was built; "
        "the command that wrote it is in the file.*"
    )
    if text.startswith("# "):
        title, _, rest = text.partition("\n")
        return f"{title}\n\n{note}\n{rest}"
    return f"# Benchmark result: `{path.stem}`\n\n{note}\n\n{text}"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, CLI_PAGE, content=render_cli()))
    for path in _mirrored():
        uri = _result_uri(path)
        content = _result_page(path) if path.suffix == ".md" else path.read_bytes()
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    mirrored = {_result_uri(p) for p in _mirrored()}
    uri = page.file.src_uri
    if uri != CLI_PAGE and uri not in mirrored:  # a page of docs/: its links are relative to docs/<folder>
        base = posixpath.join("docs", posixpath.dirname(uri)).rstrip("/")
        markdown = rewrite_links(markdown, base, uri, mirrored, uri)
    if README_MARKER.search(markdown):
        sections = readme_sections()

        def include(match: re.Match) -> str:
            name = match.group(1).strip()
            if name not in sections:
                log.warning("%s: README.md has no section %r (has: %s)", uri, name, ", ".join(sections))
                return ""
            return rewrite_links(sections[name], "", uri, mirrored, f"README.md (section {name!r}, in {uri})")

        markdown = README_MARKER.sub(include, markdown)
    if RESULTS_MARKER in markdown:
        markdown = markdown.replace(RESULTS_MARKER, results_list(mirrored))
    return separate_lists(markdown)
