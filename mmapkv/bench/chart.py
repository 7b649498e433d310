"""The chart of a run, ``latency.png``; matplotlib is imported only when it is drawn."""

from __future__ import annotations

import array
from typing import Any

from .goals import _find, _median
from .workloads import OPS, SIZES

__all__ = ["draw_chart"]


def _thinned(latencies: array.array[int], most: int = 300_000) -> tuple[list[int], list[float]]:
    """Points to plot, in microseconds: all of them, or the slowest of each run of
    consecutive creates when there are millions (the tail is what the chart is for)."""
    step = -(-len(latencies) // most)
    if step == 1:
        return list(range(len(latencies))), [v / 1000 for v in latencies]
    xs: list[int] = []
    ys: list[float] = []
    for start in range(0, len(latencies), step):
        part = latencies[start:start + step]
        worst = max(part)
        xs.append(start + part.index(worst))
        ys.append(worst / 1000)
    return xs, ys


def draw_chart(results: dict[str, Any], fill_latencies: array.array[int] | None, path: str) -> str | None:
    """Write the PNG; return None, or why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    groups = results["groups"]
    if not groups:
        return "no results to draw"
    n = max(g["n"] for g in groups)
    head = _find(groups, n, "1KiB") or next(g for g in groups if g["n"] == n)
    shown = [s for s in head["stores"] if s in ("mmapkv", "dict") or s.endswith("[mmapkv]") or s == "jsonfile"]
    fig = plt.figure(figsize=(13, 9.5))
    ax = fig.add_subplot(2, 1, 1)
    width = 0.8 / max(len(shown), 1)
    for j, name in enumerate(shown):
        ops = head["stores"][name]["ops"]
        xs, med, p99 = [], [], []
        for i, op in enumerate(OPS):
            if op in ops:
                xs.append(i + (j - (len(shown) - 1) / 2) * width)
                med.append(ops[op]["median_ns"] / 1000)
                p99.append(ops[op]["p99_ns"] / 1000)
        bars = ax.bar(xs, med, width, label=name, zorder=2)
        ax.scatter(xs, p99, marker="_", s=80, color=bars.patches[0].get_facecolor() if bars.patches else None,
                   zorder=3, linewidths=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(OPS)), [op.replace("_", " ") + (" (per key)" if op == "batch_create" else "")
                                     for op in OPS])
    ax.set_ylabel("microseconds (bar: median, dash: p99)")
    ax.set_title(f"Latency per operation, N={n:,}, {head['value_size']} values "
                 "(peers with mmapkv's codec; log scale)")
    ax.grid(axis="y", which="both", alpha=0.3, zorder=0)
    ax.legend(ncol=4, fontsize=8)

    ax2 = fig.add_subplot(2, 2, 3)
    fill = results.get("fill")
    if fill and fill_latencies:
        fill_x, fill_y = _thinned(fill_latencies)
        ax2.scatter(fill_x, fill_y, s=1, alpha=0.4, rasterized=True)
        for gr in fill["growths"]:
            ax2.axvline(gr["create_index"], color="red", alpha=0.25, linewidth=0.8)
        ax2.set_yscale("log")
        step = len(fill_latencies) // max(len(fill_x), 1)
        ax2.set_xlabel("create number (red: the file grew)" + (f"; the slowest of each {step:,}" if step > 1 else ""))
        ax2.set_ylabel("microseconds")
        c = fill["create"]
        ax2.set_title(f"Filling one store to its {fill['max_size'] / 2**20:,.0f} MiB ceiling: max "
                      f"{c['max_ns'] / 1e6:.1f} ms, p99.9 {c['p999_ns'] / 1e3:.0f} us", fontsize=10)
        ax2.grid(alpha=0.3)
    else:
        ax2.set_axis_off()

    ax3 = fig.add_subplot(2, 2, 4)
    sizes = [s for s in SIZES if _find(groups, n, s)]
    for name in shown:
        medians = [_median(_find(groups, n, s), name, "read_hit") for s in sizes]
        if any(medians):
            ax3.plot(sizes, [y / 1000 if y else float("nan") for y in medians], marker="o", label=name)
    ax3.set_yscale("log")
    ax3.set_ylabel("read hit median, microseconds")
    ax3.set_xlabel("value size")
    ax3.set_title(f"Read hit by value size, N={n:,}", fontsize=10)
    ax3.grid(alpha=0.3, which="both")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
