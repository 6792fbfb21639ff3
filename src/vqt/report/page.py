"""The report page: one HTML file with inline CSS, showing PNGs from a folder beside it.

The results tables are `vqt.report.tables.markdown` (the run's results.md) turned into HTML, so the page and
results.md always agree. An inline script checks on load that every figure loaded: it writes `data-images=
"loaded/total"` on <body> (what the tests read) and shows a note when the PNG folder did not travel with the page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from urllib.parse import quote

from vqt.report import tables
from vqt.report.load import RunReport, TaskReport

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222;
       max-width: 1400px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #555; font-size: 13px; margin: 2px 0; }
.meta code { background: #f3f3f3; padding: 0 3px; }
.banner { background: #fff4d6; border: 1px solid #e0b84f; padding: 8px 12px; margin: 12px 0; font-size: 14px; }
.error { background: #fde2e2; border-color: #d66; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 12px; }
th, td { border: 1px solid #d6d6d6; padding: 4px 8px; text-align: left; }
th { background: #f3f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.figures img { border: 1px solid #e3e3e3; max-width: 100%; height: auto; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; }
dl.settings dt { color: #555; } dl.settings dd { margin: 0; font-family: monospace; }
"""

CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-images", (images.length - broken.length) + "/" + images.length);
  if (broken.length) {
    var note = document.getElementById("missing-figures");
    note.textContent = broken.length + " of " + images.length + " figures did not load (" +
      broken.map(function (i) { return i.getAttribute("src"); }).join(", ") +
      "): keep the report/ folder next to report.html.";
    note.hidden = false;
  }
});
"""

NUMBER = re.compile(r"^[–-]?$|^-?[\d.]+(e-?\d+)?( ± [\d.]+)?$")
SETTINGS = ("backbone", "method", "tasks", "lrs", "wds", "seeds", "epochs", "warmup_epochs", "batch_size",
            "eval_every", "queries", "variant", "transform", "img_size", "compress", "group_lasso", "data_root")


def markdown_tables(text: str, link_tasks: Sequence[str] = ()) -> str:
    """The pipe tables (and ### titles) of `tables.markdown` as HTML; task names link to their sections."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if not rows:
            return
        header, body = rows[0], rows[2:] if len(rows) > 1 and set("".join(rows[1])) <= set("-: ") else rows[1:]
        out.append("<table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in header) + "</tr></thead><tbody>")
        for row in body:
            cells = []
            for index, cell in enumerate(row):
                shown = escape(cell)
                if index == 0 and cell in link_tasks:
                    shown = f'<a href="#task-{escape(_slug(cell))}">{shown}</a>'
                kind = ' class="num"' if index > 0 and NUMBER.match(cell) else ""
                cells.append(f"<td{kind}>{shown}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        rows.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([cell.strip() for cell in stripped.strip("|").split("|")])
            continue
        flush()
        if stripped.startswith("#"):
            out.append(f"<h3>{escape(stripped.lstrip('#').strip())}</h3>")
    flush()
    return "\n".join(out)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _img(src: str, alt: str, kind: str) -> str:
    return f'<img src="{escape(quote(src))}" alt="{escape(alt)}" data-figure="{escape(kind)}">'


def _task_section(task: TaskReport, figures: dict[str, str]) -> str:
    parts = [f'<h2 id="task-{escape(_slug(task.name))}">{escape(task.name)} '
             f'<span class="meta">({escape(task.group)})</span></h2>']
    s = task.summary
    if s is not None and s.get("lr") is not None:
        test = tables.mean_pm_std(tables.percent(s.get("test_mean")), tables.percent(s.get("test_std")))
        line = (f"chosen lr {s['lr']:g}, wd {s['weight_decay']:g} (val200 {100 * (s.get('val_accuracy') or 0):.2f}%); "
                f"test {test}% over {s.get('seeds_done', 0)} seed(s)")
        compressed = s.get("compressed")
        if compressed:
            kept = tables.mean_pm_std(tables.percent(compressed.get("test_mean")),
                                      tables.percent(compressed.get("test_std")))
            line += f"; compressed (keep {compressed['keep']:g}) {kept}%"
        parts.append(f'<p class="meta">{escape(line)}</p>')
    if not task.finished:
        state = f"in progress: {task.progress()}" if task.started else "not started yet"
        parts.append(f'<p class="banner">{escape(task.name)} is {escape(state)}.</p>')
    for note in (s or {}).get("notes", []):
        parts.append(f'<p class="banner error">{escape(note)}</p>')
    if task.grid:
        parts.append('<h3>lr × wd grid (train800 → val200, last epoch)</h3><div class="figures">'
                     + _img(figures["heatmap"], f"{task.name}: val accuracy over the grid", "heatmap")
                     + _img(figures["grid"], f"{task.name}: grid training curves", "grid-curves") + "</div>")
    if task.finals:
        row = _img(figures["final"], f"{task.name}: final seeds' training loss", "final-curves")
        if "kept" in figures:
            row += _img(figures["kept"], f"{task.name}: kept fraction per feature group", "kept")
        parts.append("<h3>Final seeds (train800val200 → test, last epoch)"
                     + (" and the feature groups the group lasso kept" if "kept" in figures else "")
                     + f'</h3><div class="figures">{row}</div>')
        if "kept" in figures:
            totals = ", ".join(f"seed {k.seed}: {k.fraction:.1%} of {sum(n for _, _, n in k.pieces)}"
                               for k in task.kept)
            parts.append(f'<p class="meta">Features kept by the compressed heads ({escape(totals)}); pieces: '
                         "the backbone's pre-logits feature, then each layer's query outputs.</p>")
    if task.kept_note:
        parts.append(f'<p class="banner">Kept feature groups not shown: {escape(task.kept_note)}</p>')
    return "\n".join(parts)


def render(run: RunReport, figures: dict[str, dict[str, str]], version: str) -> str:
    """The page. `figures[task][kind]` is the src (relative to the page) of that task's PNG of that kind."""
    rows = run.rows()
    title = f"{run.method} on {run.backbone}"
    status = "complete" if run.finished else "unfinished"
    body = [f"<h1>vqt sweep report: {escape(title)}</h1>",
            f'<p class="meta">Run folder <code>{escape(str(run.path.resolve()))}</code> · status '
            f"<b>{status}</b>"
            + (f" · {run.summary['seconds']:g} s" if run.summary and run.summary.get("seconds") is not None else "")
            + f" · written by vqt {escape(version)}</p>"]
    unfinished = run.unfinished()
    if unfinished:
        body.append(f'<p class="banner" id="unfinished">{escape(unfinished[0].upper() + unfinished[1:])}.</p>')
    body.append('<p class="banner error" id="missing-figures" hidden></p>')
    body.append("<h2>Results</h2>")
    same = ("Same table as results.md." if run.finished else
            "The table of results.md, with a row for every task not finished yet.")
    body.append('<p class="meta">Accuracies in %: val200 of the chosen configuration at the last epoch; test mean '
                f"± std over the seeds at the last epoch. {same}</p>")
    linked = [t.name for t in run.tasks if t.started]
    body.append(markdown_tables(tables.markdown(rows), linked))
    settings = "".join(f"<dt>{escape(key)}</dt><dd>{escape(str(run.config[key]))}</dd>" for key in SETTINGS
                       if run.config.get(key) is not None)
    body.append(f'<details><summary>Settings (config.yaml)</summary><dl class="settings">{settings}</dl></details>')
    for task in run.tasks:
        if task.started:
            body.append(_task_section(task, figures.get(task.name, {})))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)} — vqt report</title>\n<style>{STYLE}</style>\n"
            f"<script>{CHECK_IMAGES}</script>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
