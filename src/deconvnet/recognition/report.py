"""``report.html`` of a recognition run: the results table, the DN's filters in pixel space
(what the features are made of), per-class accuracies and the confusion matrices; one
self-contained file (figures embedded)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .._files import atomic_write_text
from ..report import CSS, img_tag

__all__ = ["write_recognition_report", "results_markdown", "ROW_TITLES", "SHORT_TITLES", "PAPER_ROWS"]

#: row titles of the results table.
ROW_TITLES = {"dn1": "DN layer 1 (ours)", "dn2": "DN layer 2 (ours)", "dn12": "DN layers 1+2 (ours)",
              "sift": "dense SIFT-style + SPM (ours, same pipeline)"}

#: short names, for figure titles.
SHORT_TITLES = {"dn1": "DN layer 1", "dn2": "DN layer 2", "dn12": "DN layers 1+2", "sift": "dense SIFT"}

#: the paper's table (paper-notes 5.2, from memory there: VERIFY), for the Markdown output.
PAPER_ROWS = (("DN layers 1+2 (paper, VERIFY)", "58.6 +- 0.7", "66.9 +- 1.1"),
              ("Lazebnik et al. 2006, SIFT + SPM (VERIFY)", "56.4", "64.6 +- 0.8"),
              ("Lee et al. 2009, conv. DBN layers 1+2 (VERIFY)", "57.7 +- 1.5", "65.4 +- 0.5"))


def _filters_html(network_folder: Path) -> str:
    """Every layer's filters projected to pixel space, from the run's network (if it has one)."""
    if not (network_folder / "model.json").exists():
        return ""
    from ..network import DeconvNet  # noqa: PLC0415
    from ..plotting import png_bytes  # noqa: PLC0415
    from ..viz import tile_filters  # noqa: PLC0415

    net = DeconvNet.load(network_folder)
    parts = ["<h2>The network's filters in pixel space</h2><p class='note'>The DN features are these filters' "
             "maps: each tile is the image made by a single 1 in one map, synthesised down through the layers "
             "below (mid-grey 0; each tile scaled alone; most active maps first).</p>"]
    for i in range(1, net.n_layers + 1):
        P = net.project(i).cpu()
        grid = tile_filters(P[np.asarray(net.map_order(i))])
        zoom = max(2, min(8, 600 // max(grid.shape[:2])))
        parts.append(f"<figure>{img_tag(png_bytes(grid, zoom=zoom, vmin=0, vmax=1), f'layer {i} filters')}"
                     f"<figcaption>layer {i}: {P.shape[0]} maps</figcaption></figure>")
    return "".join(parts)


def write_recognition_report(out, doc: dict, confusion: bytes) -> Path:
    """Write ``out/report.html`` from ``doc`` (what ``results.json`` holds) and the confusion figure."""

    out = Path(out)
    esc = html.escape
    table = results_markdown(doc).split("\n\n")[0].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if not line.startswith("|---")]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>deconvnet recognition</title>"
             f"<style>{CSS}</style></head><body><h1>Recognition: {esc(doc['root'])}</h1>",
             "<table>" + "".join("<tr>" + "".join(f"<{'th' if r == 0 else 'td'} class='l'>{esc(c)}</"
                                                  f"{'th' if r == 0 else 'td'}>" for c in row) + "</tr>"
                                 for r, row in enumerate(rows)) + "</table>",
             f"<p class='note'>{esc(results_markdown(doc).split(chr(10) + chr(10))[1])}</p>"]
    parts.append(_filters_html(out / "network"))
    largest = max(int(n) for r in doc["results"].values() for n in r)
    parts.append(f"<h2>Per-class accuracy, {largest} training images per class</h2><p class='note'>Mean over "
                 "the splits of each class's fraction of correctly classified test images (%).</p>")
    feats = list(doc["results"])
    head = "<tr><th class='l'>class</th><th>images</th>" + "".join(f"<th>{esc(ROW_TITLES.get(f, f))}</th>"
                                                                    for f in feats) + "</tr>"
    body = []
    for c, name in enumerate(doc["classes"]):
        vals = [doc["results"][f][str(largest)]["per_class"][c] for f in feats]
        best = np.nanmax(vals) if not np.all(np.isnan(vals)) else np.nan
        cells = "".join(f"<td>{'<b>' if v == best else ''}{100 * v:.1f}{'</b>' if v == best else ''}</td>"
                        for v in vals)
        body.append(f"<tr><td class='l'>{esc(name)}</td><td>{doc['counts'][name]}</td>{cells}</tr>")
    parts.append("<table>" + head + "".join(body) + "</table>")
    parts.append("<h2>Confusion matrices</h2><p class='note'>Summed over the splits; each row divided by its "
                 f"total.</p>{img_tag(confusion, 'confusion matrices')}")
    t = doc["timing"]
    parts.append("<h2>Time</h2><table>" + "".join(f"<tr><th class='l'>{esc(k.replace('_', ' '))}</th><td>"
                                                  f"{v if not isinstance(v, float) else f'{v:.3f}'}</td></tr>"
                                                  for k, v in t.items() if v is not None) + "</table>")
    if doc["skipped"]:
        parts.append("<h2>Files left out</h2><ul>" + "".join(f"<li>{esc(p)}: {esc(w)}</li>" for p, w in doc["skipped"])
                     + "</ul>")
    parts.append("</body></html>")
    return atomic_write_text(out / "report.html", "".join(parts))


def results_markdown(doc: dict) -> str:
    """The table in the shape of the paper's: a row per feature, a column per training count
    (mean +- std of the mean per-class accuracy over the splits, in %), then the paper's rows."""
    counts = sorted({int(n) for r in doc["results"].values() for n in r})
    head = "| method | " + " | ".join(f"{n} train" for n in counts) + " |"
    lines = [head, "|---|" + "---|" * len(counts)]
    for f, per_n in doc["results"].items():
        cells = [f"{100 * per_n[str(n)]['mean']:.1f} +- {100 * per_n[str(n)]['std']:.1f}" if str(n) in per_n else "-"
                 for n in counts]
        lines.append(f"| {ROW_TITLES.get(f, f)} | " + " | ".join(cells) + " |")
    if counts == [15, 30]:
        for title, a, b in PAPER_ROWS:
            lines.append(f"| {title} | {a} | {b} |")
    s = doc["settings"]
    t = doc["timing"]
    lines += ["", f"{len(doc['classes'])} classes, {s['n_splits']} splits, up to {s['n_test']} test images per class; "
              f"mean per-class accuracy (%), mean +- std over splits. Paper rows: on the full Caltech-101, as "
              f"recalled in paper-notes 5.2 (VERIFY).",
              f"Run time {t['total_seconds']:.0f} s on {doc['environment']['cpu']} "
              f"({doc['environment']['threads']} threads, device {doc['environment']['device']})."]
    return "\n".join(lines) + "\n"
