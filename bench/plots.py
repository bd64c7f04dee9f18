"""PNG charts of a benchmark results dict (the content of bench/results/latest.json).

One file per section that is present: quality, freshness, batch, serving. A
missing (or empty) section is skipped, never an error, because `bench.run` can
run any subset of sections. Figures are drawn with matplotlib's object API on
the Agg canvas: no pyplot global state and no display needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def _k(section: dict) -> int:
    return int(section.get("params", {}).get("k", 10))


def _grouped_bars(ax, groups: Sequence[str], series: Mapping[str, Sequence[float]], value_fmt: str = "{:.3f}") -> None:
    """One cluster per group, one bar per series inside it, each bar labelled with its value."""
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for n, (name, values) in enumerate(series.items()):
        offset = (n - (len(series) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, label=name)
        ax.bar_label(bars, labels=[value_fmt.format(v) for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    # Headroom above the tallest bar for its label and a one-row legend, so neither hides a bar.
    tallest = np.nanmax([np.nanmax(v) for v in series.values() if len(v)] or [1.0])
    if np.isfinite(tallest) and tallest > 0:
        ax.set_ylim(0, tallest * 1.2)
    ax.legend(fontsize=8, loc="upper left", ncol=len(series))
    ax.grid(axis="y", alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)  # attaches the Agg canvas: savefig renders without any GUI backend
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def plot_quality(quality: dict, path: Path) -> Path | None:
    """Grouped bars: NDCG@k, precision@k, recall@k per model (ties ordered as the split orders them)."""
    k = quality.get("params", {}).get("k", 10)
    section = quality.get("ordered", {})
    metrics = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}"]
    models = [m for m, v in section.items() if isinstance(v, dict) and all(key in v for key in metrics)]
    if not models:
        return None
    fig = Figure(figsize=(10, 4.8))
    ax = fig.add_subplot()
    _grouped_bars(ax, metrics, {m: [float(section[m][key]) for key in metrics] for m in models})
    ax.set_title(f"Offline quality, MovieLens-100K per-user time split (k={k}, mean of seeds)")
    ax.set_xlabel("metric")
    ax.set_ylabel("score (0–1, higher is better)")
    return _save(fig, path)


def plot_freshness(freshness: dict, path: Path) -> Path | None:
    """Grouped bars per recommender: NDCG@k of the stale, realtime and retrained views."""
    k = freshness.get("split", {}).get("k", 10)
    models = [m for m, v in freshness.items() if isinstance(v, dict) and "stale" in v]
    if not models:
        return None
    fig = Figure(figsize=(10, 4.8))
    ax = fig.add_subplot()
    views = ("stale", "realtime", "retrain")
    _grouped_bars(ax, models, {v: [float(freshness[m][v][f"ndcg@{k}"]) for m in models] for v in views})
    ax.set_title(f"Freshness: NDCG@{k} on held events after streaming, per recommender")
    ax.set_xlabel("recommender")
    ax.set_ylabel(f"NDCG@{k}")
    return _save(fig, path)


def plot_batch(batch: dict, path: Path) -> Path | None:
    """Grouped bars: wall seconds of the whole batch pipeline per engine, per input size (events)."""
    engines = {e: runs for e, runs in batch.items() if isinstance(runs, dict) and runs}
    sizes = sorted({int(n) for runs in engines.values() for n in runs}, key=int)
    if not sizes:
        return None
    series = {
        engine: [float(runs.get(str(n), {}).get("seconds", np.nan)) for n in sizes] for engine, runs in engines.items()
    }
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    _grouped_bars(ax, [f"{n:,}" for n in sizes], series, value_fmt="{:.0f}")
    ax.set_title("Batch pipeline (clean + train + evaluate + publish), wall time")
    ax.set_xlabel("input size (events)")
    ax.set_ylabel("seconds (lower is better)")
    return _save(fig, path)


def plot_serving(serving: dict, path: Path) -> Path | None:
    """Two panels per serving mode: max requests/s and p99 latency (ms) of GET /recommend."""
    modes = {m: r for m, r in serving.get("modes", {}).items() if "max_requests_per_s" in r and "p99_ms" in r}
    if not modes:
        return None
    names = list(modes)
    fig = Figure(figsize=(10, 4.5))
    panels = (
        ("max_requests_per_s", "requests/s (higher is better)", "Throughput", "{:,.0f}"),
        ("p99_ms", "p99 latency, ms (lower is better)", "p99 at each mode's offered rate", "{:.1f}"),
    )
    for n, (key, ylabel, title, fmt) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, n)
        values = [float(modes[m][key]) for m in names]
        bars = ax.bar(names, values, color=f"C{n - 1}")
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=7, padding=1)
        ax.set_title(f"GET /recommend: {title}")
        ax.set_xlabel("index / replicas")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


PLOTS: dict[str, Callable[[dict, Path], Path | None]] = {
    "quality": plot_quality,
    "freshness": plot_freshness,
    "batch": plot_batch,
    "serving": plot_serving,
}


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    """One PNG per section present in `results` (`<section>.png` in `out_dir`); returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for section, plot in PLOTS.items():
        data = results.get(section)
        if not isinstance(data, dict) or not data:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = plot(data, out_dir / f"{section}.png")
        if path is not None:
            written.append(path)
    return written


__all__ = ["write_plots"]
