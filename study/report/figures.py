"""Figures: matplotlib SVGs cached by content hash, and the hand-written reliability SVG."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from study.atomic import write_atomic

FIGURE_VERSION = "3"  # bump when the drawing code changes: old cache entries stop matching


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
        path = self.folder / f"{digest}.svg"
        self.used.append(path.name)
        try:
            svg = path.read_bytes()
        except OSError:
            svg = DRAW[kind](data)
            self.drawn += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, svg)
        return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def draw_bars(data: dict) -> bytes:
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    n = len(data["models"])
    width = 0.38
    xs = list(range(n))
    for offset, metric, label in ((-width / 2, "top1", "top-1"), (width / 2, "top5", "top-5")):
        means = [v[0] if v[0] is not None else 0 for v in data[metric]]
        errs = [v[1] for v in data[metric]]
        bars = ax.bar(
            [x + offset for x in xs], means, width, yerr=errs if any(errs) else None, label=label
        )
        ax.bar_label(bars, labels=[f"{m:.4f}" for m in means], fontsize=7, padding=2)
    # Arm names can be long ("ResNet-18 (fast, epochs=30)"): wrap them to fit under their bars.
    ax.set_xticks(xs, [textwrap.fill(m, 22) for m in data["models"]], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


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


def draw_curves(data: dict) -> bytes:
    fig = _figure(7.0, 6.6)
    axes = fig.subplots(3, 2)
    panels = (
        ("train_top1", "train accuracy", "epoch"),
        ("train_loss", "train loss", "epoch"),
        ("test_top1", "test accuracy (top-1)", "epoch"),
        ("epoch_seconds", "epoch time (s)", "epoch"),
        (_against_training_time, "test accuracy (top-1) against training time", "training (s)"),
        ("images_per_s", "training images / s", "epoch"),
    )
    for ax, (series, label, xlabel) in zip(axes.flat, panels, strict=True):
        drawn = False
        for run in data["runs"]:
            points = series(run) if callable(series) else run.get(series) or []
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3,
                        label=run["label"])  # fmt: skip
                drawn = True
        if not drawn:  # e.g. runs recorded before study kept per-epoch training seconds
            ax.text(0.5, 0.5, "not recorded by these runs", ha="center", va="center",
                    fontsize=8, color="0.4", transform=ax.transAxes)  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if xlabel == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)),
                   fontsize=7)  # fmt: skip
    return _svg(fig)


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
    return _svg(fig)


DRAW = {"bars": draw_bars, "curves": draw_curves, "confusion": draw_confusion}


def reliability_svg(data: dict) -> str:
    """Reliability diagrams (one panel per model) as a small hand-written SVG data URI: cheap
    enough to draw on every build, so they need no figure cache."""
    from xml.sax.saxutils import escape

    size, pad, gap = 150.0, 30.0, 20.0  # plot square, left/bottom margin, space between panels
    panels = data["models"]
    width = len(panels) * (size + pad + gap) + gap
    height = size + pad + 34.0
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
        for k, (acc, conf) in enumerate(zip(p["accuracy"], p["confidence"], strict=True)):
            if acc is None:
                continue
            left, w = x(edges[k]), (edges[k + 1] - edges[k]) * size
            parts.append(f'<rect x="{left:.1f}" y="{y(acc):.1f}" width="{w:.1f}" '
                         f'height="{y(0) - y(acc):.1f}" fill="#4c72b0" stroke="white" '
                         'stroke-width="0.5"/>')  # fmt: skip
            top, bottom = max(acc, conf), min(acc, conf)
            parts.append(f'<rect x="{left:.1f}" y="{y(top):.1f}" width="{w:.1f}" '
                         f'height="{y(bottom) - y(top):.1f}" fill="#dd8452" '
                         'fill-opacity="0.45"/>')  # fmt: skip
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
    parts.append("</svg>")
    svg = "".join(parts).encode()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
