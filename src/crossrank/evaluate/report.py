"""report.md and report.html (self-contained: CSS inline, plots as base64 PNG) from an evaluation's results."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

from crossrank.evaluate.schema import SCHEMA_DOC
from crossrank.files import atomic_write_text

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# ---------------------------------------------------------------------------------------------- formatting
def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}"


def _ms(summary: Any) -> str:
    if not summary or summary.get("p50") is None:
        return "–"
    return f"{_num(summary['p50'])} / {_num(summary['p95'])}"


def _num(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _delta(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:+.3f}"


def _wlt(c: dict) -> str:
    if c.get("wins") is None:
        return "–"
    return f"{c['wins']}/{c['losses']}/{c['ties']}"


def _config_label(c: dict) -> str:
    if c["reranker"] == "none":
        return f"{c['retriever']}"
    f = "" if c["fusion"] == "none" else f" [{c['fusion']}]"
    return f"{c['retriever']} → {c['reranker']}{f}"


def _series_label(reranker: str, fusion: str) -> str:
    if reranker == "none":
        return "first stage"
    return reranker + ("" if fusion == "none" else f" [{fusion}]")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower x = latency, higher y = quality), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best + 1e-12:
            front.append(i)
            best = points[i][1]
    return front


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], highlight: Sequence[bool] | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = ' class="hl"' if highlight and highlight[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- tables
_MAIN_HEADER = ["First stage", "Reranker", "Fusion", "K", "nDCG@10", "Δ nDCG@10", "Recall@K (first stage, ceiling)",
                "MRR@10", "MAP@100", "W/L/T vs first stage", "Rerank p50 / p95 ms", "Total p50 / p95 ms"]


def _main_rows(configs: list[dict]) -> list[list[str]]:
    rows = []
    for c in configs:
        lat = c["latency_ms"]
        rows.append([
            c["retriever"], c["reranker"], c["fusion"], str(c["k"]), _f(c["metrics"]["ndcg@10"]),
            _delta(c["delta_ndcg@10"]) if c["reranker"] != "none" else "–", _f(c["first_stage_recall@k"]),
            _f(c["metrics"]["mrr@10"]), _f(c["metrics"]["map@100"]), _wlt(c), _ms(lat.get("rerank")),
            _ms(lat.get("total")),
        ])
    return rows


def _sorted_configs(data: dict) -> list[dict]:
    rorder = {r: i for i, r in enumerate(data["settings"]["retrievers"])}
    rr_order = {r: i for i, r in enumerate(["none"] + list(data["settings"]["rerankers"]))}
    return sorted(data["configs"], key=lambda c: (rorder.get(c["retriever"], 99), rr_order.get(c["reranker"], 99),
                                                  c["fusion"] != "none", c["fusion"], c["k"]))


def _answer_rows(data: dict, configs: list[dict]) -> tuple[list[str], list[list[str]]]:
    ns = data["answers"]["ns"]
    header = ["First stage", "Reranker", "Fusion", "K"] + [f"answer in top {n}" for n in ns]
    llm = data["answers"].get("llm")
    if llm:
        header += [f"LLM contains / exact @{n}" for n in llm["ns"]]
    rows = []
    for c in configs:
        row = [c["retriever"], c["reranker"], c["fusion"], str(c["k"])]
        row += [_f(c["answer_in_top_n"].get(str(n))) for n in ns]
        if llm:
            acc = c.get("llm_answer_accuracy") or {}
            row += [f"{_f(acc[str(n)]['contains'])} / {_f(acc[str(n)]['exact'])}" if str(n) in acc else "–"
                    for n in llm["ns"]]
        rows.append(row)
    return header, rows


def _notes(data: dict) -> list[str]:
    s = data["settings"]
    notes = [
        "Reranked configurations reorder exactly the first stage's top-K documents: documents the first stage "
        "missed are never credited, so their Recall@K equals the first stage's (the ceiling column).",
        "nDCG@10 uses linear gains (trec_eval/BEIR convention); MAP@100 and Recall are over the K-document "
        "final list; metrics computed with ranx.",
        f"First-stage latency: every query, one search at a time (after a warm-up call). Rerank latency: wall clock "
        f"of `reranker.score` on the top-K candidates of a sample of {s['latency_queries']} queries per K "
        "(seeded, disjoint across K where the dataset allows; the first stage whose candidates are timed rotates "
        "over the retrievers). Total = first stage + rerank on those same sampled queries "
        "(for first stages alone: all queries).",
        "W/L/T: queries whose nDCG@10 the reranking raised / lowered / left unchanged against the same first "
        "stage.",
    ]
    ma = data.get("machine", {})
    la = ma.get("load_average_at_start")
    notes.append(
        f"Machine: {ma.get('cpu_model') or ma.get('processor', '?')}, {ma.get('cpu_count', '?')} CPUs, torch threads "
        f"{ma.get('torch_threads', '?')}, CUDA {'yes' if ma.get('cuda') else 'no'}"
        + (f", load average at start {la}" if la else "") + ". Latencies are only comparable on this machine."
    )
    for label, info in data.get("rerankers", {}).items():
        ls = info["latency_sample"]
        bits = [f"`{label}` ({info['name']}, fingerprint {info['fingerprint']}): {info['pairs_scored']} pairs "
                f"scored this run, {info['pairs_in_cache_before']} from the cache"]
        if info.get("pairs_per_s"):
            bits.append(f"sweep throughput {info['pairs_per_s']} pairs/s")
        if ls["timings_reused"]:
            bits.append(f"{ls['timings_reused']} stored timings reused from an earlier run")
        if ls["pairs_recomputed_for_timing"]:
            bits.append(f"{ls['pairs_recomputed_for_timing']} pairs re-scored only to time them")
        if ls["timed_cache_hits"]:
            bits.append(f"WARNING: {ls['timed_cache_hits']} timed pairs were answered by the reranker's own cache")
        for fl, note in (info.get("fusions") or {}).items():
            bits.append(f"fusion {fl}: {note}")
        notes.append("; ".join(bits) + ".")
    idx = data.get("index")
    if idx:
        notes.append(f"Index: {idx['path']} ({idx['status']}; {idx['passages']} passages, chunk_tokens="
                     f"{idx['chunk_tokens']}, dense model {idx['dense_model']}).")
    for r, fs in data["first_stage"].items():
        if fs["failed_queries"]:
            notes.append(f"{r}: {fs['failed_queries']} queries were rejected by the retriever (scored 0).")
    return notes


# ---------------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "axes.titlesize": 14, "axes.labelsize": 12, "legend.fontsize": 10.5,
                         "xtick.labelsize": 11, "ytick.labelsize": 11})
    return plt


def plot_ndcg_vs_k(data: dict) -> str:
    """One panel per first stage: nDCG@10 vs K for each reranker/fusion (solid), the first stage's Recall@K
    (dotted, the ceiling), rerank p95 latency on a second y-axis (dashed)."""
    plt = _plt()
    retrievers = data["settings"]["retrievers"]
    ks = data["settings"]["ks"]
    n = len(retrievers)
    ncols = min(2, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.4 * ncols, 5.0 * nrows), squeeze=False)
    series = []
    for c in data["configs"]:
        key = (c["reranker"], c["fusion"])
        if key not in series:
            series.append(key)
    color = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(series)}
    rerankers = [r for r in data["settings"]["rerankers"]]
    lat_color = {r: _COLORS[(len(series) + i) % len(_COLORS)] for i, r in enumerate(rerankers)}
    handles = {}
    for idx, r in enumerate(retrievers):
        ax = axes[idx // ncols][idx % ncols]
        rows = [c for c in data["configs"] if c["retriever"] == r]
        for s in series:
            pts = sorted((c["k"], c["metrics"]["ndcg@10"]) for c in rows if (c["reranker"], c["fusion"]) == s)
            if pts:
                (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2, color=color[s],
                               label=f"nDCG@10 · {_series_label(*s)}")
                handles[h.get_label()] = h
        rec = sorted((c["k"], c["first_stage_recall@k"]) for c in rows if c["reranker"] == "none")
        if rec:
            (h,) = ax.plot([p[0] for p in rec], [p[1] for p in rec], ls=":", lw=2, color="#555555", marker=".",
                           label="first-stage Recall@K (ceiling)")
            handles[h.get_label()] = h
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K (first-stage candidates reranked)")
        ax.set_ylabel("nDCG@10 / Recall@K")
        ax.set_title(f"first stage: {r}")
        ax.grid(alpha=0.3)
        if rerankers:
            ax2 = ax.twinx()
            for rr in rerankers:
                lat = data["rerankers"][rr]["latency_ms"]
                pts = [(k, lat[str(k)]["p95"]) for k in ks if lat.get(str(k), {}).get("p95") is not None]
                if pts:
                    (h,) = ax2.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=1.8, marker="x",
                                    color=lat_color[rr], label=f"rerank p95 ms · {rr} (right axis)")
                    handles[h.get_label()] = h
            ax2.set_ylabel("rerank latency p95 (ms)")
            ax2.set_ylim(bottom=0)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle(f"{data['dataset']['name']} ({data['dataset']['split']}): nDCG@10 vs K, with rerank latency",
                 fontsize=16)
    if n < nrows * ncols:  # an empty panel: the legend goes there
        spare = axes[nrows - 1][ncols - 1]
        spare.legend(list(handles.values()), list(handles.keys()), loc="center", frameon=False, fontsize=12)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    else:
        rows_needed = (len(handles) + 1) // 2
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=2, frameon=False,
                   fontsize=12)
        fig.tight_layout(rect=(0, 0.045 * rows_needed / max(1, nrows) + 0.02, 1, 0.95))
    return _png(fig)


def _separate_labels(fig, labels: list) -> None:
    """Move each label that overlaps an earlier one down below it (in screen space), so that close points on the
    front (similar quality and latency) keep readable labels."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in labels:
        for _ in range(len(labels)):
            box = label.get_window_extent(renderer)
            hit = next((b for b in placed if box.overlaps(b)), None)
            if hit is None:
                break
            x, y = label.xyann
            label.xyann = (x, y - (box.y1 - hit.y0 + 2) * 72.0 / fig.dpi)  # pixels -> offset points
        placed.append(label.get_window_extent(renderer))


def plot_frontier(data: dict) -> str:
    """nDCG@10 against total p95 latency for every configuration, the Pareto front highlighted."""
    plt = _plt()
    cfgs = [c for c in data["configs"] if c["latency_ms"]["total"] and c["latency_ms"]["total"]["p95"] is not None]
    fig, ax = plt.subplots(figsize=(10.5, 6.2))
    if not cfgs:
        ax.text(0.5, 0.5, "no latency measurements", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)
    retrievers = data["settings"]["retrievers"]
    series = []
    for c in cfgs:
        if (c["reranker"], c["fusion"]) not in series:
            series.append((c["reranker"], c["fusion"]))
    rcolor = {r: _COLORS[i % len(_COLORS)] for i, r in enumerate(retrievers)}
    smarker = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(series)}
    pts = [(max(c["latency_ms"]["total"]["p95"], 1e-3), c["metrics"]["ndcg@10"]) for c in cfgs]
    front = pareto_front(pts)
    for c, (x, y) in zip(cfgs, pts, strict=True):
        ax.scatter(x, y, s=46, color=rcolor.get(c["retriever"], "#333"), marker=smarker[(c["reranker"], c["fusion"])],
                   alpha=0.75, zorder=2)
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="black", lw=1.6, alpha=0.8, zorder=3)
    ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="black", linewidths=2, zorder=4)
    labels = []
    for j, i in enumerate(front):  # alternate below / above so neighbouring labels rarely collide
        c = cfgs[i]
        labels.append(ax.annotate(f"{_config_label(c)} K={c['k']}", pts[i], textcoords="offset points",
                                  xytext=(8, -15) if j % 2 == 0 else (8, 9), fontsize=10, zorder=5,
                                  bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}))
    ax.set_xscale("log")
    ax.margins(x=0.06, y=0.1)
    ax.set_xlabel("total latency p95 per query (ms, log scale)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{data['dataset']['name']}: quality-latency frontier (Pareto front circled)")
    ax.grid(alpha=0.3, which="both")
    _separate_labels(fig, labels)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], ls="", marker="o", color=rcolor[r], label=f"first stage: {r}", markersize=8)
              for r in retrievers]
    legend += [Line2D([], [], ls="", marker=smarker[s], color="#444", label=_series_label(*s), markersize=8)
               for s in series]
    legend.append(Line2D([], [], color="black", marker="o", mfc="none", markersize=11, label="Pareto front"))
    ax.legend(handles=legend, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def plot_answers(data: dict) -> str | None:
    """Answer-in-top-N vs N at the largest K, one line per configuration."""
    if not data.get("answers"):
        return None
    plt = _plt()
    ns = data["answers"]["ns"]
    k = max(data["settings"]["ks"])
    cfgs = [c for c in data["configs"] if c["k"] == k]
    fig, ax = plt.subplots(figsize=(10.5, 5.8))
    retrievers = data["settings"]["retrievers"]
    rcolor = {r: _COLORS[i % len(_COLORS)] for i, r in enumerate(retrievers)}
    series: list[tuple[str, str]] = []
    for c in cfgs:
        if (c["reranker"], c["fusion"]) not in series:
            series.append((c["reranker"], c["fusion"]))
    styles = ["--", "-", "-.", ":", (0, (5, 1, 1, 1))]
    for c in cfgs:
        s_idx = series.index((c["reranker"], c["fusion"]))
        pts = [(n, c["answer_in_top_n"].get(str(n))) for n in ns if c["answer_in_top_n"].get(str(n)) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[s_idx % len(_MARKERS)], lw=2,
                    markersize=8, color=rcolor.get(c["retriever"], "#333"), ls=styles[s_idx % len(styles)],
                    alpha=0.85, label=_config_label(c))
    ax.set_xticks(ns)
    ax.set_xlabel("N (passages handed to the LLM)")
    ax.set_ylabel("share of questions with a gold answer in the top N")
    ax.set_title(f"{data['dataset']['name']}: answer in top N (K={k}; colour = first stage, dashed = no reranking)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def plot_answer_selection(data: dict) -> str:
    plt = _plt()
    methods = data["methods"]
    names = ["MAP", "MRR", "P@1"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(names))]
        vals = [m["metrics"][n] for n in names]
        bars = ax.bar(xs, vals, width=width * 0.95, color=_COLORS[i % len(_COLORS)], label=m["name"])
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=10)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"{data['dataset']['name']}: answer selection")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


# ---------------------------------------------------------------------------------------------- documents
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif; font-size: 16px;
       line-height: 1.5; color: #1a1a1a; max-width: 1320px; margin: 24px auto; padding: 0 20px; }
h1 { font-size: 28px; margin-bottom: 4px; } h2 { font-size: 21px; margin-top: 34px; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 15px; }
table { border-collapse: collapse; font-size: 14px; margin: 10px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 4px 9px; text-align: right; white-space: nowrap; }
th { background: #f2f4f7; white-space: normal; vertical-align: bottom; max-width: 130px; }
td:first-child, th:first-child, td:nth-child(2), td:nth-child(3), th:nth-child(2), th:nth-child(3) { text-align: left; }
tr.hl td { background: #fff7d6; }
tbody tr:nth-child(even) td { background-color: #fafafa; }
tbody tr.hl:nth-child(even) td { background: #fff7d6; }
img { max-width: 100%; border: 1px solid #e4e4e4; margin: 8px 0; }
ul.notes li { margin-bottom: 6px; font-size: 15px; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 13px; line-height: 1.4; }
.scroll { overflow-x: auto; }
.warn { background: #fdecea; border-left: 4px solid #d93025; padding: 8px 12px; }
"""


def _html_page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _beir_head(data: dict) -> tuple[str, str, str]:
    """``(title, meta, summary)`` of a BEIR report."""
    ds = data["dataset"]
    configs = _sorted_configs(data)
    title = f"crossrank evaluation: {ds['name']} ({ds['split']})"
    meta = (f"{ds['n_queries']} queries (of {ds['n_queries_in_split']} in the split), {ds['n_docs']} documents, "
            f"{ds['n_judgments']} judgments{' (graded)' if ds['graded'] else ''}; created {data['created']}, "
            f"run took {data['duration_s']:.0f} s.")
    # best first-stage and best overall, for the summary line
    best = max(configs, key=lambda c: c["metrics"]["ndcg@10"])
    best_fs = max((c for c in configs if c["reranker"] == "none"), key=lambda c: c["metrics"]["ndcg@10"])
    summary = (f"Best nDCG@10: {best['metrics']['ndcg@10']:.3f} ({_config_label(best)}, K={best['k']}, total p95 "
               f"{_ms(best['latency_ms']['total']).split(' / ')[-1]} ms). Best first stage alone: "
               f"{best_fs['metrics']['ndcg@10']:.3f} ({best_fs['retriever']}).")
    return title, meta, summary


def _beir_headline_md(data: dict) -> list[str]:
    """The report's first part: title, what was run, the best configurations, the main table."""
    title, meta, summary = _beir_head(data)
    rows = _main_rows(_sorted_configs(data))
    return [f"# {title}", "", meta, "", summary, "", "## Main table", "",
            _md_table(_MAIN_HEADER, rows, ["l", "l", "l"] + ["r"] * (len(_MAIN_HEADER) - 3)), ""]


def _beir_reports(data: dict, out: Path) -> None:
    configs = _sorted_configs(data)
    title, meta, summary = _beir_head(data)
    notes = _notes(data)
    rows = _main_rows(configs)
    md = _beir_headline_md(data)
    if data.get("answers"):
        h, arows = _answer_rows(data, configs)
        md += ["## Answer accuracy", "", data["answers"]["normalisation"] + ".", "",
               _md_table(h, arows, ["l", "l", "l"] + ["r"] * (len(h) - 3)), ""]
        llm = data["answers"].get("llm")
        if llm:
            md += [f"LLM: model `{llm['model']}` at {llm['base_url']}, K in {llm['ks']}, {llm['n_questions']} "
                   f"questions, {llm['distinct_prompts']} distinct prompts, {llm['request_errors']} failed requests "
                   "(counted wrong). contains = a gold answer occurs in the reply; exact = normalised exact match.", ""]
    md += ["## Notes", ""] + [f"- {n}" for n in notes] + ["", "## SCHEMA", "", "```text", SCHEMA_DOC.rstrip(), "```", ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    frontier_pts = [(c["latency_ms"]["total"]["p95"], c["metrics"]["ndcg@10"]) for c in configs
                    if c["latency_ms"]["total"] and c["latency_ms"]["total"]["p95"] is not None]
    front_ids = set()
    cands = [c for c in configs if c["latency_ms"]["total"] and c["latency_ms"]["total"]["p95"] is not None]
    for i in pareto_front(frontier_pts):
        front_ids.add(cands[i]["id"])
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class=\"meta\">{html.escape(meta)}</p>",
            f"<p><b>{html.escape(summary)}</b></p>",
            "<h2>Quality vs K</h2>", _img(plot_ndcg_vs_k(data), "nDCG@10 vs K"),
            "<h2>Quality-latency frontier</h2>", _img(plot_frontier(data), "quality-latency frontier"),
            "<h2>Main table</h2><p class=\"meta\">Highlighted rows are on the Pareto front (nDCG@10 vs total p95).</p>",
            "<div class=\"scroll\">", _html_table(_MAIN_HEADER, rows, [c["id"] in front_ids for c in configs]),
            "</div>"]
    if data.get("answers"):
        h, arows = _answer_rows(data, configs)
        body += ["<h2>Answer accuracy</h2>", f"<p class=\"meta\">{html.escape(data['answers']['normalisation'])}.</p>",
                 _img(plot_answers(data), "answer in top N"), "<div class=\"scroll\">", _html_table(h, arows),
                 "</div>"]
    body += ["<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
             "<h2>Schema of results.json</h2>", f"<pre>{html.escape(SCHEMA_DOC)}</pre>"]
    atomic_write_text(out / "report.html", _html_page(title, body))


def _answer_selection_headline_md(data: dict) -> tuple[list[str], list[str], list[list[str]]]:
    """``(markdown lines, header, rows)``: the report's title, what was run and the methods table."""
    ds = data["dataset"]
    title = f"crossrank answer selection: {ds['name']}"
    meta = (f"{ds['n_questions_evaluated']} questions evaluated ({ds['n_pairs_evaluated']} candidate sentences, "
            f"{ds['mean_candidates']} per question); {ds['n_questions_excluded_no_positive']} of "
            f"{ds['n_questions']} questions excluded because none of their candidates is correct (standard "
            f"practice). Created {data['created']}.")
    header = ["Method", "MAP", "MRR", "P@1", "W/L/T (AP vs file order)", "Latency p50 / p95 ms (per question)"]
    rows = []
    for m in data["methods"]:
        wlt = f"{m['wins']}/{m['losses']}/{m['ties']}" if m.get("wins") is not None else "–"
        rows.append([m["name"], _f(m["metrics"]["MAP"]), _f(m["metrics"]["MRR"]), _f(m["metrics"]["P@1"]), wlt,
                     _ms(m.get("latency_ms"))])
    return [f"# {title}", "", meta, "", _md_table(header, rows, ["l"] + ["r"] * 5), ""], header, rows


def _answer_selection_reports(data: dict, out: Path) -> None:
    ds = data["dataset"]
    title = f"crossrank answer selection: {ds['name']}"
    head, header, rows = _answer_selection_headline_md(data)
    meta = head[2]
    notes = [f"WARNING: {w}." for w in data.get("warnings", [])]
    notes += ["Baseline = candidates in file order. Ties in reranker scores keep file order. Metrics computed "
              "with ranx (MAP and MRR over the whole candidate list).",
              "Latency: wall clock of one reranker.score call with all of a question's candidates."]
    md = head + ["## Notes", ""]
    md += [f"- {n}" for n in notes] + ["", "## SCHEMA", "", "```text", SCHEMA_DOC.rstrip(), "```", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class=\"meta\">{html.escape(meta)}</p>"]
    body += [f"<p class=\"warn\">Warning: {html.escape(w)}.</p>" for w in data.get("warnings", [])]
    body += [_img(plot_answer_selection(data), "answer selection metrics"), _html_table(header, rows),
            "<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
            "<h2>Schema of results.json</h2>", f"<pre>{html.escape(SCHEMA_DOC)}</pre>"]
    atomic_write_text(out / "report.html", _html_page(title, body))


def headline(data: dict) -> str:
    """The short summary ``crossrank eval`` prints: report.md up to its notes (no notes, no schema)."""
    if data["kind"] == "beir":
        md = _beir_headline_md(data)
        if data.get("answers"):
            h, arows = _answer_rows(data, _sorted_configs(data))
            md += ["## Answer accuracy", "", _md_table(h, arows, ["l", "l", "l"] + ["r"] * (len(h) - 3)), ""]
        return "\n".join(md)
    return "\n".join(_answer_selection_headline_md(data)[0])


def write_reports(results: Any) -> None:
    """Write report.md and report.html next to results.json."""
    data, out = results.data, Path(results.out_dir)
    if data["kind"] == "beir":
        _beir_reports(data, out)
    else:
        _answer_selection_reports(data, out)
