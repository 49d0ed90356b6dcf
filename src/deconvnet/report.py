"""A self-contained HTML report of a trained network (every figure embedded as a data URI).

Sections: the configuration and versions; per layer, the filters projected to pixel space
(:meth:`DeconvNet.project`); reconstructions of a few images from each layer alone with their
SNR (:meth:`DeconvNet.reconstruct`); objective and sparsity per epoch; timings.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import torch

from ._files import atomic_write_text
from .network import DeconvNet, snr_db
from .plotting import history_png, png_bytes
from .viz import signed_to_unit, tile_filters

__all__ = ["write_report", "build_report", "img_tag", "CSS"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}img{image-rendering:pixelated;max-width:100%}
figure{display:inline-block;margin:.4em;text-align:center;vertical-align:top}
figcaption{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.note{color:#555;font-size:.9em}
"""


def img_tag(data: bytes, alt: str, width: int | None = None) -> str:
    """PNG bytes as an ``<img>`` with a data URI (the report is one self-contained file)."""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img src="{src}" alt="{html.escape(alt)}"{w}>'


def _zoom_for(side: int, target: int = 260) -> int:
    return max(1, target // max(side, 1))


def build_report(net: DeconvNet, *, title: str = "deconvnet run", images=None, image_names=None,
                 run_info: dict | None = None) -> str:
    """The report as an HTML string; ``images`` (paths or arrays) are reconstructed."""
    cfg = net.config
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    info = dict(run_info or {})
    summary = [("layers", net.n_layers), ("maps", " / ".join(str(l.n_maps) for l in net.layers_)),
               ("filters", " / ".join(f"{l.filter_size}x{l.filter_size}" for l in net.layers_)),
               ("connectivity", " / ".join(lc.connectivity for lc in cfg.layers)),
               ("colour", cfg.color), ("preprocessing", cfg.preprocess)]
    for key in ("images", "n_images", "device", "preset", "command"):
        if key in info:
            summary.append((key.replace("_", " "), info[key]))
    parts.append("<table>" + "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td class='l'>"
                                     f"{html.escape(str(v))}</td></tr>" for k, v in summary) + "</table>")

    # ---- pixel-space filters
    parts.append("<h2>Filters in pixel space</h2><p class='note'>Each tile is the image made by a single 1 "
                 "at the centre of one feature map, synthesised down through the layers below "
                 "(layer 1: the filters themselves). Mid-grey is 0; each tile is scaled on its own. Tiles are "
                 "sorted by how often their map was active (non-zero) on the training images in the last "
                 "epoch, most active first: a map that is never active gets no filter update, so its tile "
                 "shows its random initial filters seen through the layers below.</p>")
    for i in range(1, net.n_layers + 1):
        P = net.project(i).cpu()
        order = net.map_order(i)
        S = P.shape[-1]
        grid = tile_filters(P[torch.as_tensor(order)])
        zoom = max(2, min(8, 600 // max(grid.shape[:2])))
        act = getattr(net.layers_[i - 1], "map_activity_", None)
        note = ""
        if act is not None:
            note = (f"; active fraction {np.mean(act):.4f} on average; {int((act == 0).sum())} of {len(act)} "
                    f"maps never active")
        parts.append(f"<figure>{img_tag(png_bytes(grid, zoom=zoom, vmin=0, vmax=1), f'layer {i} filters')}"
                     f"<figcaption>layer {i}: {P.shape[0]} maps, {S}x{S} pixels{note}</figcaption></figure>")

    # ---- reconstructions
    if images:
        parts.append("<h2>Reconstructions from each layer alone</h2><p class='note'>The preprocessed input "
                     "(what layer 1 models) and its reconstruction from the maps of one layer, synthesised "
                     "down; SNR = 10 log10(|y|^2 / |y - y_hat|^2).</p><table><tr><th class='l'>image</th>"
                     + "".join(f"<th>layer {i} SNR (dB)</th>" for i in range(1, net.n_layers + 1)) + "</tr>")
        figures, rows = [], []
        names = image_names or [str(i + 1) for i in range(len(images))]
        Y = net.prepare(images)
        targets = [y[0].cpu() for y in Y]
        maps = net.infer_prepared(Y, net.n_layers)  # every layer, inferred once (also for the patches below)
        for j, name in enumerate(names):
            target = targets[j]
            zoom = _zoom_for(max(target.shape[1:]), 200)
            cells = [f"<figure>{img_tag(png_bytes(signed_to_unit(target.numpy()), zoom=zoom, vmin=0, vmax=1), 'input')}"
                     f"<figcaption>{html.escape(name)}: input</figcaption></figure>"]
            snrs = []
            for i in range(1, net.n_layers + 1):
                r = net.synthesize_down(maps[i - 1][j][None], i)[0].cpu()
                snr = snr_db(target, r)
                snrs.append(snr)
                cells.append(f"<figure>{img_tag(png_bytes(signed_to_unit(r.numpy()), zoom=zoom, vmin=0, vmax=1), f'layer {i}')}"
                             f"<figcaption>layer {i}: {snr:.2f} dB</figcaption></figure>")
            figures.append("<div>" + "".join(cells) + "</div>")
            rows.append(f"<tr><td class='l'>{html.escape(name)}</td>" + "".join(f"<td>{v:.2f}</td>" for v in snrs)
                        + "</tr>")
        parts.append("".join(rows) + "</table>" + "".join(figures))

    # ---- what the maps respond to
    if images:
        n_top, n_maps = 6, 12
        parts.append("<h2>What the maps respond to</h2><p class='note'>For the most active maps of each layer "
                     f"(rows): the pixel-space filter, then the {n_top} patches of the input images above "
                     "(preprocessed, as layer 1 sees them) under the map's largest activations, cropped to the "
                     "filter's receptive field and multiplied by the activation's sign; blank where a map has "
                     "fewer activations. If a layer learned, its patches look alike and like the filter.</p>")
        for i in range(1, net.n_layers + 1):
            top = net.top_patches_from(Y, maps[i - 1], i, n=n_top)
            P = net.project(i).detach().double().cpu()
            order = torch.as_tensor(net.map_order(i)[:n_maps])
            rows = torch.cat([P[order][:, None], top.patches[order]], 1)  # (maps, 1 + n_top, C, S, S)
            grid = tile_filters(rows.flatten(0, 1), ncols=n_top + 1)
            zoom = max(2, min(6, 700 // max(grid.shape[:2])))
            parts.append(f"<figure>{img_tag(png_bytes(grid, zoom=zoom, vmin=0, vmax=1), f'layer {i} top patches')}"
                         f"<figcaption>layer {i}: filter, then top {n_top} patches, for its {len(order)} most "
                         "active maps</figcaption></figure>")

    # ---- training curves
    if any(net.history_):
        parts.append("<h2>Training</h2>" + img_tag(history_png(net.history_), "objective and sparsity per epoch"))
        parts.append("<p>Whether a layer learned: <i>active maps</i> (with a non-zero on some training image), "
                     "<i>SNR own input</i> (its maps against the inputs it explains), <i>SNR pixels</i> and "
                     "<i>held-out</i> (images rebuilt in layer 1's input space from this layer's maps alone, "
                     "training and held-out images) and <i>|cos| init</i> (mean over filter planes of the "
                     "cosine to their random start: 1 = not learned, about 0.1 for unrelated 7x7 planes).</p>")
        parts.append("<table><tr><th>layer</th><th>epoch</th><th>objective</th><th>data term</th><th>penalty</th>"
                     "<th>non-zero fraction</th><th>lam</th><th>active maps</th><th>SNR own input (dB)</th>"
                     "<th>SNR pixels (dB)</th><th>held-out (dB)</th><th>|cos| init</th><th>seconds</th></tr>")
        for i, records in enumerate(net.history_, start=1):
            K = cfg.layers[i - 1].n_maps
            for r in records:
                active = "&ndash;" if r.active_maps is None else f"{r.active_maps}/{K}"
                parts.append(f"<tr><td>{i}</td><td>{r.epoch}</td><td>{r.objective:.5g}</td><td>{r.data:.5g}</td>"
                             f"<td>{r.penalty:.5g}</td><td>{r.nonzero_fraction:.4f}</td><td>{_num(r.lam, '.4g')}</td>"
                             f"<td>{active}</td><td>{_num(r.snr_db)}</td><td>{_num(r.pixel_snr_db)}</td>"
                             f"<td>{_num(r.heldout_snr_db)}</td><td>{_num(r.cos_init, '.3f')}</td>"
                             f"<td>{r.seconds:.2f}</td></tr>")
        parts.append("</table>")
    # ---- timings
    if any(s is not None for s in net.seconds_):
        total = sum(s for s in net.seconds_ if s is not None)
        parts.append("<h2>Timings</h2><table><tr><th>layer</th><th>training seconds</th></tr>"
                     + "".join(f"<tr><td>{i}</td><td>{s:.1f}</td></tr>" for i, s in enumerate(net.seconds_, 1)
                               if s is not None)
                     + f"<tr><th>total</th><th>{total:.1f}</th></tr></table>")
    # ---- configuration
    parts.append("<h2>Configuration</h2><pre>" + html.escape(cfg.to_json()) + "</pre>")
    if info.get("versions"):
        parts.append("<h2>Versions</h2><pre>" + html.escape(json.dumps(info["versions"], indent=2)) + "</pre>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _num(v, fmt: str = ".2f") -> str:
    """A table cell: ``v`` formatted, or a dash where it was not measured."""
    return "&ndash;" if v is None else format(v, fmt)


def write_report(run_dir, *, images=None, max_images: int = 3, out=None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) for the model in ``run_dir``.

    ``images``: paths to reconstruct; by default the first ``max_images`` training images
    listed in ``RUN_DIR/run.json``, when they can still be read.
    """
    run_dir = Path(run_dir)
    net = DeconvNet.load(run_dir)
    info = {}
    run_json = run_dir / "run.json"
    if run_json.is_file():
        try:
            info = json.loads(run_json.read_text())
        except (OSError, ValueError):
            info = {}
    if not isinstance(info, dict):  # run.json is not checked like the model: use what is usable
        info = {}
    meta = json.loads((run_dir / "model.json").read_text()) if (run_dir / "model.json").is_file() else {}
    info.setdefault("versions", meta.get("versions"))
    if images is None:
        files = info.get("files")
        images = [p for p in (files if isinstance(files, list) else []) if isinstance(p, str) and Path(p).is_file()]
        images = images[:max_images]
    images = [Path(p) for p in images][:max_images]
    html_text = build_report(net, title=f"deconvnet: {run_dir.resolve().name}", images=images or None,
                             image_names=[p.name for p in images], run_info=info)
    return atomic_write_text(Path(out) if out else run_dir / "report.html", html_text)
