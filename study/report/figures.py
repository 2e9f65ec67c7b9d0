"""Figures: matplotlib SVGs cached by content hash, and the hand-written reliability SVG."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from study.atomic import write_atomic
from study.report.model import SEED_MODELS

FIGURE_VERSION = "11"
# Figures drawn as PNG at RASTER_DPI rather than SVG: a confusion matrix's hundreds of count
# labels made WeasyPrint shape and draw each as text, a large share of a build's time.
RASTER = {"confusion"}
RASTER_DPI = 220  # bump when the drawing code changes: old cache entries stop matching


@dataclass
class FigureCache:
    """SVG figures by content hash: a figure whose data did not change is not drawn again."""

    folder: Path
    drawn: int = 0
    used: list[str] = field(default_factory=list)

    def get(self, kind: str, data: dict) -> str:
        import matplotlib

        key = json.dumps(
            {"kind": kind, "data": data, "v": FIGURE_VERSION, "mpl": matplotlib.__version__},
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        suffix = "png" if kind in RASTER else "svg"
        path = self.folder / f"{digest}.{suffix}"
        self.used.append(path.name)
        try:
            image = path.read_bytes()
        except OSError:
            image = DRAW[kind](data)
            self.drawn += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, image)
        mime = "image/png" if suffix == "png" else "image/svg+xml"
        return f"data:{mime};base64," + base64.b64encode(image).decode()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # A fixed layout (_grid), not matplotlib's constrained one: constrained layout measures
    # every label's extent and took a third of a cold report build; these margins are known.
    return Figure(figsize=(width, height))


def _grid(fig, rows: int, cols: int, *, left, right, top, bottom, wgap=0.0, hgap=0.0) -> dict:
    """GridSpec keywords for margins and gaps given in inches."""
    width, height = fig.get_size_inches()
    axis_w = (width - left - right - (cols - 1) * wgap) / cols
    axis_h = (height - top - bottom - (rows - 1) * hgap) / rows
    return {"left": left / width, "right": 1 - right / width, "top": 1 - top / height,
            "bottom": bottom / height, "wspace": wgap / axis_w,
            "hspace": hgap / axis_h}  # fmt: skip


def _legend_below(fig, ncols: int, handles=None) -> float:
    """A legend along the figure's bottom edge, outside every axes; returns its height in
    inches, which the caller keeps free below the axes."""
    handles = handles if handles is not None else fig.axes[0].get_legend_handles_labels()[0]
    rows = math.ceil(len(handles) / max(ncols, 1))
    legend = fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                        ncols=ncols, fontsize=7, frameon=False, borderaxespad=0.2)  # fmt: skip
    legend.set_gid("legend")
    return 0.08 + 0.16 * rows


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=RASTER_DPI, metadata={"Software": None})
    return buf.getvalue()


def _svg(fig) -> bytes:
    import matplotlib

    buf = io.BytesIO()
    # Text as SVG text, not one path per glyph: WeasyPrint draws a figure's paths one by one,
    # and the glyph outlines were most of a build's time.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


# One colour per model, the same in every figure (bars, curves, reliability, compute): the
# seed's three models in Okabe-Ito blue, orange and green, any other in one of Paul Tol's
# "muted" colours (both palettes are colour-blind safe).
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#332288", "#cc6677", "#88ccee", "#882255",
           "#999933", "#aa4499", "#44aa99", "#ddcc77", "#117733")  # fmt: skip
CHANCE_COLOUR = "#555555"
# Variants of a seed model that take its colour in a report without it (VGG-16-BN is blue where
# VGG-16 is absent).
SEED_VARIANTS = {"vgg16_bn": "vgg16"}
# Markers that tell data sets apart where one figure holds several.
MARKERS = ("o", "s", "^", "D", "v", "P")


def model_colours(models: list[str]) -> dict[str, str]:
    """{model: colour}, the same in every figure of a report. The seed's three models keep
    the first three colours; any other model (or arm) takes one chosen by its name, so that
    leaving a model out of a report changes no other model's colour (nor its cached
    figures); a clash moves on to the next free colour."""
    colours: dict[str, str] = {}
    free = list(range(len(PALETTE)))
    seed = len(SEED_MODELS)
    for m in models:
        variant_of = SEED_VARIANTS.get(m)
        if m in SEED_MODELS:
            want = SEED_MODELS.index(m)
        elif variant_of in SEED_MODELS and variant_of not in models:
            want = SEED_MODELS.index(variant_of)
        else:
            digest = int(hashlib.sha256(m.encode()).hexdigest(), 16)
            want = seed + digest % (len(PALETTE) - seed)
        if not free:  # more models than colours: reuse them in turn
            free = list(range(len(PALETTE)))
        later = [i for i in free if i >= want and (i >= seed) == (want >= seed)]
        pick = later[0] if later else free[-1]
        free.remove(pick)
        colours[m] = PALETTE[pick]
    return colours


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def gid(kind: str, model: str) -> str:
    """An SVG group id naming what an artist draws and for which model: `bar-top1--VGG-16`
    (the tests read a model's colour in every figure by it)."""
    return f"{kind}--{slug(model)}"


def legend_columns(labels: list[str], most: int) -> int:
    """Columns for a legend below a figure: fewer where the labels are long (arm names such
    as `ResNet-18 (paper, 1.2 epochs, budget 600 s)`), so that it stays within the figure."""
    per_row = max(1, 90 // max(12, max((len(label) for label in labels), default=0) + 6))
    return max(1, min(most, len(labels), per_row))


def bar_figure(data: dict):
    """Top-1 and top-5 per model: a group per metric, a bar per model in its colour, a dashed
    chance line, the y axis scaled to the data (a low-accuracy data set is not flat), and the
    legend below the axes where it covers no bar or label."""
    models, colours = data["models"], data["colours"]
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    n = len(models)
    width = min(0.8 / max(n, 1), 0.3)
    highest = 0.0
    for i, (model, colour) in enumerate(zip(models, colours, strict=True)):
        xs = [g + (i - (n - 1) / 2) * width for g in range(2)]
        values = [data["top1"][i], data["top5"][i]]
        means = [v[0] if v[0] is not None else 0 for v in values]
        errs = [v[1] for v in values]
        bars = ax.bar(xs, means, width * 0.92, yerr=errs if any(errs) else None, color=colour,
                      label=model, error_kw={"elinewidth": 0.8, "capsize": 2})  # fmt: skip
        for metric, patch in zip(("top1", "top5"), bars.patches, strict=True):
            patch.set_gid(gid(f"bar-{metric}", model))
        ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=6, padding=1)
        highest = max(highest, *(m + e for m, e in zip(means, errs, strict=True)))
    chance = data.get("chance")
    if chance:
        for g, level in enumerate((chance, min(5 * chance, 1.0))):
            (line,) = ax.plot([g - 0.45, g + 0.45], [level, level], ls="--", lw=0.9,
                              color=CHANCE_COLOUR, label="chance" if g == 0 else None)  # fmt: skip
            line.set_gid(f"chance-top{1 if g == 0 else 5}")
            highest = max(highest, level)
    # Room above the tallest bar for its label; never past 1 by more than that room.
    ax.set_ylim(0, min(1.0, highest) * 1.15 if highest > 0 else 1.0)
    ax.set_xticks([0, 1], ["top-1", "top-5"], fontsize=8)
    ax.set_xlim(-0.55, 1.55)
    ax.set_ylabel("test accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    below = _legend_below(fig, legend_columns(models, n + 1))
    fig.subplots_adjust(**_grid(fig, 1, 1, left=0.55, right=0.1, top=0.1, bottom=0.3 + below))
    return fig


def draw_bars(data: dict) -> bytes:
    return _svg(bar_figure(data))


def _against_training_time(run: dict) -> list[tuple[float, float]]:
    """(cumulative training seconds, test top-1) after each epoch: accuracy per unit of time,
    the fair comparison of protocols that differ in cost. Runs recorded before `train_seconds`
    was a metric have no such curve."""
    seconds = dict(run.get("train_seconds") or [])
    points, total = [], 0.0
    for epoch, top1 in run.get("test_top1") or []:
        if epoch not in seconds:
            return []
        total += seconds[epoch]
        points.append((total, top1))
    return points


def seed_band(runs: list[dict], metric: str):
    """(epochs, mean, low, high) over the runs of one cell at the epochs every run recorded;
    low and high are the min and max across seeds. None where no epoch is shared."""
    series = [dict(r.get(metric) or []) for r in runs]
    epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not epochs:
        return None
    values = [[s[e] for s in series] for e in epochs]
    return (epochs, [sum(v) / len(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])  # fmt: skip


# The training-curve panels: (title, x label, [(metric, line style, what it is)]).
CURVE_PANELS = (
    ("top-1 accuracy", "epoch", [("test_top1", "-", "test"), ("train_top1", "--", "train")]),
    ("loss", "epoch", [("test_loss", "-", "test"), ("train_loss", "--", "train")]),
    ("learning rate (end of epoch)", "epoch", [("lr", "-", "train")]),
    ("test top-1 against training time", "training time (s)",
     [(_against_training_time, "-", "test")]),
    ("training images / s", "epoch", [("images_per_s", "-", "train")]),
)  # fmt: skip


def curve_figure(data: dict):
    """Per data set, five panels: train (dashed) and test (solid) accuracy in one panel, so the
    gap shows; train and test loss likewise; the learning rate; test accuracy against training
    time; throughput. A cell with several seeds is drawn as its mean with a band from min to
    max across them."""
    from matplotlib.lines import Line2D

    fig = _figure(7.0, 3.9)
    mosaic = fig.subplot_mosaic("AABBCC;DDDEEE")  # three panels over two, on a 2 x 6 grid
    axes = [mosaic[k] for k in "ABCDE"]
    for ax, (title, xlabel, metrics) in zip(axes, CURVE_PANELS, strict=True):
        drawn = False
        for model in data["models"]:
            colour, runs = model["colour"], model["runs"]
            for metric, style, _ in metrics:
                name = metric if isinstance(metric, str) else "test_top1_time"
                band = (
                    seed_band(runs, metric) if len(runs) > 1 and isinstance(metric, str) else None
                )
                if band:
                    epochs, mean, low, high = band
                    (line,) = ax.plot(epochs, mean, ls=style, color=colour, marker="o", ms=2.5,
                                      lw=1.2)  # fmt: skip
                    line.set_gid(gid(name, model["model"]))
                    fill = ax.fill_between(epochs, low, high, color=colour, alpha=0.2, lw=0)
                    fill.set_gid(gid(f"band-{name}", model["model"]))
                    drawn = True
                    continue
                for run in runs:
                    points = metric(run) if callable(metric) else run.get(metric) or []
                    if points:
                        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points],
                                          ls=style, color=colour, marker="o", ms=2.5, lw=1.2,
                                          alpha=1.0 if len(runs) == 1 else 0.7)  # fmt: skip
                        line.set_gid(gid(name, model["model"]))
                        drawn = True
        if "accuracy" in title and data.get("chance") and drawn:
            line = ax.axhline(data["chance"], ls=":", lw=0.9, color=CHANCE_COLOUR)
            line.set_gid(f"chance-{slug(title)}")
        if not drawn:  # e.g. runs recorded before study kept per-epoch training seconds
            ax.text(0.5, 0.5, "not recorded by these runs", ha="center", va="center",
                    fontsize=8, color="0.4", transform=ax.transAxes)  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if xlabel == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.spines[["top", "right"]].set_visible(False)
    handles = [Line2D([], [], color=m["colour"], lw=2, label=m["label"]) for m in data["models"]]
    handles += [Line2D([], [], color="0.3", ls="-", label="test"),
                Line2D([], [], color="0.3", ls="--", label="train")]  # fmt: skip
    if data.get("chance"):
        handles.append(Line2D([], [], color=CHANCE_COLOUR, ls=":", label="chance"))
    below = _legend_below(fig, legend_columns([h.get_label() for h in handles], 6), handles)
    fig.subplots_adjust(**_grid(fig, 2, 6, left=0.5, right=0.1, top=0.22, bottom=0.4 + below,
                                wgap=0.55, hgap=0.62))  # fmt: skip
    return fig


def draw_curves(data: dict) -> bytes:
    return _svg(curve_figure(data))


# The accuracy-versus-compute figure's x axes: point key -> (axis label, unit divisor).
COMPUTE_AXES = {
    "seconds": ("training time (s)", 1.0),
    "gmacs": ("GMACs / image", 1.0),
    "params": ("parameters (millions)", 1e6),
}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points no other point beats on both (cheaper or as cheap, and more
    accurate), in order of cost."""
    front: list[tuple[float, float]] = []
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((cost, accuracy))
    return front


def _log_ticks(ax) -> None:
    """Log-axis ticks at 1, 2 and 5 per decade, labelled as plain numbers: a short range (38 s
    to 150 s) still gets labels, where decades alone gave it one or none."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _cost_axis(ax, xs: list[float]) -> None:
    """A log axis where the costs span more than LOG_SPAN (ticks at 1, 2, 5 per decade), a linear
    one where they are close (a log axis there showed one tick or none); room either side so
    no point sits on the frame."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if not xs:
        return
    low, high = min(xs), max(xs)
    if high > LOG_SPAN * low:
        ax.set_xscale("log")
        _log_ticks(ax)
        ax.set_xlim(low / 1.3, high * 1.3)
    else:
        pad = 0.15 * (high - low) or 0.1 * high
        ax.set_xlim(max(0.0, low - pad), high + pad)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))


LOG_SPAN = 4.0


def compute_figure(data: dict):
    """Per data set (a row, with its own accuracy axis), each cell's mean test top-1 against
    what it cost: training time, with the Pareto front, and the model's compute (GMACs per
    image) and size (parameters), where the runs record them. Colour: model. Cost axes are
    logarithmic where the costs span more than a factor of LOG_SPAN."""
    from matplotlib.lines import Line2D

    points = [p for p in data["points"] if p.get("top1") is not None]
    axes_spec = [(k, v) for k, v in COMPUTE_AXES.items() if any(p.get(k) for p in points)]
    datasets = list(dict.fromkeys(p["dataset"] for p in points))
    fig = _figure(7.0, 0.5 + 1.75 * len(datasets))
    grid = fig.subplots(len(datasets), len(axes_spec), squeeze=False)
    for number, (row, dataset) in enumerate(zip(grid, datasets, strict=True)):
        mine = [p for p in points if p["dataset"] == dataset]
        low, high = min(p["top1"] for p in mine), max(p["top1"] for p in mine)
        pad = max(0.02, 0.15 * (high - low))
        for ax, (key, (label, unit)) in zip(row, axes_spec, strict=True):
            drawn = [(p[key] / unit, p["top1"], p) for p in mine if p.get(key)]
            for x, y, p in drawn:
                (dot,) = ax.plot([x], [y], ls="none", marker="o", ms=5, color=p["colour"],
                                 mec="white", mew=0.5)  # fmt: skip
                dot.set_gid(gid(f"compute-{key}-{slug(dataset).lower()}", p["model"]))
            if key == "seconds" and len(drawn) > 1:
                front = pareto_front([(x, y) for x, y, _ in drawn])
                (line,) = ax.plot([x for x, _ in front], [y for _, y in front], color="0.6",
                                  lw=0.8, ls="-", drawstyle="steps-post", zorder=0)  # fmt: skip
                line.set_gid(f"pareto-{slug(dataset).lower()}")
            _cost_axis(ax, [x for x, _, _ in drawn])
            ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad) + 0.005)
            ax.tick_params(labelsize=7)
            ax.spines[["top", "right"]].set_visible(False)
            if number == len(datasets) - 1:  # one label per column, under its last row
                ax.set_xlabel(label, fontsize=8)
        row[0].set_ylabel(f"{dataset}\ntest top-1", fontsize=8)
    models = list(dict.fromkeys((p["model"], p["colour"]) for p in points))
    handles = [Line2D([], [], color=c, lw=0, marker="o", label=m) for m, c in models]
    if any(key == "seconds" for key, _ in axes_spec):
        handles.append(Line2D([], [], color="0.6", lw=0.8, label="Pareto front (time)"))
    below = _legend_below(fig, legend_columns([h.get_label() for h in handles], 5), handles)
    fig.subplots_adjust(**_grid(fig, len(datasets), len(axes_spec), left=0.75, right=0.1,
                                top=0.1, bottom=0.4 + below, wgap=0.35, hgap=0.3))  # fmt: skip
    return fig


def draw_compute(data: dict) -> bytes:
    return _svg(compute_figure(data))


def draw_confusion(data: dict) -> bytes:
    models = data["models"]
    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig = _figure(2.4 * cols + 0.4, 2.4 * rows + 0.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    names = data["classes"]
    for ax in axes.flat[len(models) :]:
        ax.set_axis_off()
    for ax, entry in zip(axes.flat, models, strict=False):
        matrix = entry["matrix"]
        k = len(matrix)
        normed = [[c / (sum(row) or 1) for c in row] for row in matrix]
        ax.imshow(normed, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if matrix[i][j]:
                        ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=5,
                                color="white" if normed[i][j] > 0.5 else "black")  # fmt: skip
        labels = [str(names[i]) if i < len(names) else str(i) for i in range(k)]
        ax.set_xticks(range(k), labels, rotation=90, fontsize=5)
        ax.set_yticks(range(k), labels, fontsize=5)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(entry["label"], fontsize=8)
    longest = max((len(str(n)) for n in names), default=2)  # the rotated class names' room
    room = 0.3 + 0.045 * min(longest, 16)
    fig.subplots_adjust(**_grid(fig, rows, cols, left=room, right=0.1, top=0.2, bottom=room,
                                wgap=room, hgap=room + 0.2))  # fmt: skip
    return _png(fig)


DRAW = {
    "bars": draw_bars,
    "curves": draw_curves,
    "confusion": draw_confusion,
    "compute": draw_compute,
}


def reliability_svg(data: dict) -> str:
    """Reliability diagrams (one panel per model) as a small hand-written SVG data URI: cheap
    enough to draw on every build, so they need no figure cache."""
    from xml.sax.saxutils import escape

    size, pad, gap = 150.0, 30.0, 20.0  # plot square, left/bottom margin, space between panels
    panels = data["models"]
    width = len(panels) * (size + pad + gap) + gap
    strip = 24.0  # images per bin, under the axis: a bin's accuracy is only as sure as its count
    height = size + pad + 34.0 + strip + 18.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             'font-family="DejaVu Sans, sans-serif" font-size="8">']  # fmt: skip
    for i, p in enumerate(panels):
        x0, y0 = gap + pad + i * (size + pad + gap), 26.0  # the plot's top-left corner

        def x(v, x0=x0):
            return x0 + v * size

        def y(v, y0=y0):
            return y0 + (1 - v) * size

        parts.append(f'<text x="{x(0.5):.1f}" y="10" text-anchor="middle">'
                     f"{escape(p['label'])}</text>")  # fmt: skip
        ece = "ECE not meaningful" if p.get("flagged") else f"ECE {p['ece']:.4f}"
        parts.append(f'<text x="{x(0.5):.1f}" y="21" text-anchor="middle">{ece}</text>')
        edges = p["edges"]
        # The model's colour, as in every other figure; the group names the model for tests.
        parts.append(f'<g id="{gid("reliability", p["model"])}" fill="{p["colour"]}">')
        for k, (acc, conf) in enumerate(zip(p["accuracy"], p["confidence"], strict=True)):
            if acc is None:
                continue
            left, w = x(edges[k]), (edges[k + 1] - edges[k]) * size
            parts.append(f'<rect x="{left:.1f}" y="{y(acc):.1f}" width="{w:.1f}" '
                         f'height="{y(0) - y(acc):.1f}" stroke="white" '
                         'stroke-width="0.5"/>')  # fmt: skip
            top, bottom = max(acc, conf), min(acc, conf)
            parts.append(f'<rect x="{left:.1f}" y="{y(top):.1f}" width="{w:.1f}" '
                         f'height="{y(bottom) - y(top):.1f}" fill="#333333" '
                         'fill-opacity="0.3"/>')  # fmt: skip
        parts.append("</g>")
        parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#333" '
                     'stroke-dasharray="3 2" stroke-width="0.8"/>')  # fmt: skip
        parts.append(f'<rect x="{x(0)}" y="{y(1)}" width="{size}" height="{size}" '
                     'fill="none" stroke="#333" stroke-width="0.8"/>')  # fmt: skip
        for t in (0.0, 0.5, 1.0):
            parts.append(f'<text x="{x(t):.1f}" y="{y(0) + 10:.1f}" '
                         f'text-anchor="middle">{t:g}</text>')  # fmt: skip
            parts.append(f'<text x="{x(0) - 3:.1f}" y="{y(t) + 3:.1f}" '
                         f'text-anchor="end">{t:g}</text>')  # fmt: skip
        parts.append(f'<text x="{x(0.5):.1f}" y="{y(0) + 22:.1f}" text-anchor="middle">'
                     "top-1 confidence</text>")  # fmt: skip
        parts.append(f'<text transform="translate({x(0) - 20:.1f} {y(0.5):.1f}) rotate(-90)" '
                     'text-anchor="middle">accuracy</text>')  # fmt: skip
        counts = p["count"]
        most = max(counts) if counts else 0
        top = y(0) + 30.0
        parts.append('<g class="bin-counts" fill="#777777">')
        for k, n in enumerate(counts):
            if n and most:
                h = strip * n / most
                parts.append(f'<rect x="{x(edges[k]):.1f}" y="{top + strip - h:.1f}" '
                             f'width="{(edges[k + 1] - edges[k]) * size:.1f}" height="{h:.1f}" '
                             'stroke="white" stroke-width="0.5"/>')  # fmt: skip
        parts.append("</g>")
        parts.append(f'<line x1="{x(0)}" y1="{top + strip}" x2="{x(1)}" y2="{top + strip}" '
                     'stroke="#333" stroke-width="0.8"/>')  # fmt: skip
        parts.append(f'<text x="{x(0.5):.1f}" y="{top + strip + 10:.1f}" text-anchor="middle">'
                     f"images per bin (tallest {most:,})</text>")  # fmt: skip
    parts.append("</svg>")
    svg = "".join(parts).encode()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
