"""A run's results as text: the console table, and the Markdown tables of docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from .workloads import OPS

__all__ = ["format_table", "format_markdown", "format_goals"]


def _us(ns: float | None) -> str:
    if ns is None:
        return "-"
    us = ns / 1000
    if us < 10:
        return f"{us:.2f}"
    if us < 1000:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def _sampled(p: dict[str, Any], n: int, op: str) -> bool:
    """Whether only a spread-out sample of the *n* calls of *op* was timed (O(n) per call)."""
    return p["count"] < n and op not in ("open", "batch_create")


def _cell(name: str, store: dict[str, Any], op: str, n: int, sep: str, mark: str) -> str:
    """Median and p99 of *op*, then a peer's ratio to mmapkv's median, then *mark* if sampled."""
    p = store["ops"][op]
    cell = f"{_us(p['median_ns'])}{sep}{_us(p['p99_ns'])}"
    ratio = store.get("ratio_to_mmapkv", {}).get(op)
    if ratio is not None and name != "mmapkv":
        cell += f" ({ratio:.3g}x)"
    if _sampled(p, n, op):
        cell += mark
    return cell


def format_table(results: dict[str, Any]) -> str:
    lines = []
    for g in results["groups"]:
        lines.append(f"\nN={g['n']:,}  values {g['value_size']} (median {g['value_bytes_median']:,} B)  "
                     "median / p99 in us, (x) = store's median / mmapkv's")
        header = f"{'store':20}" + "".join(f"{op:>26}" for op in OPS) + f"{'file MiB':>10}"
        lines.append(header)
        for name, s in g["stores"].items():
            row = f"{name:20}"
            for op in OPS:
                p = s["ops"].get(op)
                if not p:
                    row += f"{'n/a':>26}"
                    continue
                row += f"{_cell(name, s, op, g['n'], '/', '*'):>26}"
            row += f"{s['file_bytes'] / 2**20:>10.1f}"
            lines.append(row)
    if any(True for g in results["groups"] for s in g["stores"].values()
           for op, p in s["ops"].items() if _sampled(p, g["n"], op)):
        lines.append("* a spread-out sample of the calls was timed (O(n) per call); see 'count' in results.json")
    if results.get("memory"):
        lines.append("\nMemory after N creates of 1 KiB values (fresh interpreter each):")
        lines.append(f"{'store':20}{'N':>8}{'heap KiB':>12}{'anon RSS KiB':>14}{'file MiB':>10}")
        for m in results["memory"]:
            lines.append(f"{m['store']:20}{m['n']:>8,}{m['heap_bytes'] / 1024:>12,.1f}"
                         f"{m['anon_rss_bytes'] / 1024:>14,.0f}{m['file_bytes'] / 2**20:>10.1f}")
    fill = results.get("fill")
    if fill:
        c = fill["create"]
        lines.append(f"\nFill to the ceiling ({fill['max_size']:,} B): {fill['keys']:,} creates in "
                     f"{fill['seconds']} s; median {_us(c['median_ns'])} us, p99 {_us(c['p99_ns'])}, "
                     f"p99.9 {_us(c['p999_ns'])}, max {_us(c['max_ns'])} us")
        for gr in fill["growths"]:
            lines.append(f"  growth at create {gr['create_index']:>7,}: {gr['from_bytes']:>13,} -> "
                         f"{gr['to_bytes']:>13,} B, that create took {_us(gr['ns'])} us")
        p = fill["probes"]
        lines.append(f"  probes at load {p['load']}: hits mean {p['hit']['mean']} p99 {p['hit']['p99']} "
                     f"max {p['hit']['max']}; misses mean {p['miss'].get('mean')} p99 {p['miss'].get('p99')}")
    res = results.get("resident")
    if res:
        lines.append(f"\nResident after reading {res['values_read']:,} 1 KiB values: "
                     f"{res.get('mapping_rss_pages_per_value')} pages/value mapped, page cache "
                     f"+{res.get('page_cache_pages_per_value')} pages/value; reads from the cold file: median "
                     f"{_us(res['cold_read']['median_ns'])} us, p99 {_us(res['cold_read']['p99_ns'])} us "
                     f"({res['cold_read']['major_faults']:,} major faults); cold open "
                     f"{_us(res['cold_open_ns'])} us, warm open median {_us(res['warm_open']['median_ns'])} us")
    if results.get("goals"):
        lines.append("\n" + format_goals(results["goals"]))
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


#: the peers whose ratios to mmapkv get the p50 / mean / p99 table (issue 13)
RATIO_PEERS = ("lmdb-writemap[mmapkv]", "lmdb[mmapkv]")


def _ratio_table(groups: list[dict[str, Any]]) -> list[str]:
    """mmapkv's time over each of ``RATIO_PEERS``' by op, as median, mean and p99 ratios
    (above 1: mmapkv is slower).  The mean shows what the median hides: a peer's periodic
    spikes (py-lmdb's) or ours."""
    rows = []
    for g in groups:
        mine = g["stores"].get("mmapkv")
        for peer in RATIO_PEERS:
            theirs = g["stores"].get(peer)
            if not mine or not theirs:
                continue
            cells = []
            for op in OPS:
                a, b = mine["ops"].get(op) or {}, theirs["ops"].get(op) or {}
                stats = [a[k] / b[k] if a.get(k) and b.get(k) else None for k in ("median_ns", "mean_ns", "p99_ns")]
                cells.append(" / ".join("n/a" if r is None else f"{r:.2f}" for r in stats))
            rows.append(f"| N = {g['n']:,}, {g['value_size']} | {peer} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["\n#### mmapkv's time over the peer's: median / mean / p99 ratios (above 1: mmapkv slower)\n",
            "| where | peer | " + " | ".join(op.replace("_", " ") for op in OPS) + " |",
            "| --- | --- |" + " ---: |" * len(OPS), *rows]


def format_markdown(results: dict[str, Any]) -> str:
    """The tables of ``docs/benchmarks.md``, from a results file (``--report``)."""
    out = []
    groups = results["groups"]
    for g in groups:
        out.append(f"\n#### N = {g['n']:,}, {g['value_size']} values (median {g['value_bytes_median']:,} B)\n")
        out.append("| store | " + " | ".join(op.replace("_", " ") for op in OPS) + " | file |")
        out.append("| --- |" + " ---: |" * (len(OPS) + 1))
        for name, s in g["stores"].items():
            cells = []
            for op in OPS:
                p = s["ops"].get(op)
                if not p:
                    cells.append("n/a")
                    continue
                cells.append(_cell(name, s, op, g["n"], " / ", " *"))
            out.append(f"| {name} | " + " | ".join(cells) + f" | {s['file_bytes'] / 2**20:,.1f} MiB |")
    out.extend(_ratio_table(groups))
    if results.get("memory"):
        out.append("\n| store | N | Python heap growth | anonymous RSS growth | file |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for m in results["memory"]:
            out.append(f"| {m['store']} | {m['n']:,} | {m['heap_bytes'] / 1024:,.1f} KiB | "
                       f"{m['anon_rss_bytes'] / 1024:,.0f} KiB | {m['file_bytes'] / 2**20:,.1f} MiB |")
    fill = results.get("fill")
    if fill:
        c = fill["create"]
        out.append(f"\nFill to {fill['max_size']:,} B: {fill['keys']:,} creates; median {_us(c['median_ns'])} us, "
                   f"p99 {_us(c['p99_ns'])} us, p99.9 {_us(c['p999_ns'])} us, max {_us(c['max_ns'])} us.\n")
        out.append("| growth at create | from | to | that create |")
        out.append("| ---: | ---: | ---: | ---: |")
        for gr in fill["growths"]:
            out.append(f"| {gr['create_index']:,} | {gr['from_bytes']:,} B | {gr['to_bytes']:,} B | {_us(gr['ns'])} us |")
    rows = [(f"N = {g['n']:,}, {g['value_size']}", name, st["threads"]) for g in groups
            for name, st in g["stores"].items() if st.get("threads")]
    if rows:
        out.append("\n| where | store | reads/s, one thread | reads/s, four threads | ratio | p99, one | p99, four |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for where, name, t in rows:
            out.append(f"| {where} | {name} | {t['one_thread_per_s']:,} | {t['four_threads_per_s']:,} | "
                       f"{t['ratio']:.2f} | {_us(t['one_thread']['p99_ns'])} us | {_us(t['four_threads']['p99_ns'])} us |")
        stalls = [(f"N = {g['n']:,}, {g['value_size']}", g["stalls"]) for g in groups if g.get("stalls")]
        if stalls:
            out.append(f"\n| where | machine stalls of {stalls[0][1]['threshold_us']:.0f} us or more, "
                       "per second | median stall | CPU lost | calls longer than this meet one in over 1 % |")
            out.append("| --- | ---: | ---: | ---: | ---: |")
            for where, st in stalls:
                out.append(f"| {where} | {st['per_second']:,.0f} | {st['median_us']:.1f} us | "
                           f"{st['cpu_lost']:.1%} | {st['p99_clear_below_us']:.1f} us |")
    fills = results.get("fills")
    if fills:
        out.append("\n| values (median) | keys at the ceiling | mmapkv file | B per byte stored | "
                   "py-lmdb, same records | diskcache, same records | slowest create | open, full |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size, f in fills.items():
            peers = f.get("peer_file_bytes", {})
            cells = [f"{peers[p] / 2**20:,.0f} MiB" if peers.get(p) else "n/a" for p in ("lmdb", "diskcache")]
            out.append(f"| {size} ({f['value_bytes_median']:,} B) | {f['keys']:,} | "
                       f"{f['file_bytes'] / 2**20:,.0f} MiB | {f['file_bytes'] / f['data_bytes']:.2f} | "
                       + " | ".join(cells) + f" | {f['create']['max_ns'] / 1e6:.1f} ms | "
                       f"{f['open_full']['median_ns'] / 1e6:.2f} ms |")
    if results.get("goals"):
        out.append("\n" + format_goals(results["goals"]))
    return "\n".join(out)


def format_goals(goals: list[dict[str, Any]]) -> str:
    """The goal table as Markdown (pasted into docs/benchmarks.md)."""
    rows = ["| goal | where | measured | holds |", "| --- | --- | --- | --- |"]
    for g in goals:
        holds = {True: "yes", False: "**no**", None: "?"}[g["holds"]]
        note = f" ({g['note']})" if g.get("note") else ""
        rows.append(f"| {g['goal']} | {g['where']} | {g['measured']}{note} | {holds} |")
    return "\n".join(rows)
