"""``nmq report``: one self-contained HTML page (plots embedded as PNG) and a markdown summary.

It gathers the JSON results present in a results directory (default
``benchmarks/results``), each being the ``--json`` output of a benchmark:

| file | made by |
| --- | --- |
| ``kernels.json`` | ``nmq bench kernels --json`` |
| ``accuracy.json`` | ``nmq bench accuracy --json`` |
| ``e2e.json`` | ``nmq bench e2e --json`` |
| ``hw-explore.json`` | ``nmq hw explore --json`` |
| ``hw-synth.json`` | a list of ``nmq hw synth --json`` records |

The storage plot needs no results: it is computed from the format itself.
Sections whose results are missing say so and how to make them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
from pathlib import Path

import torch

from ..compress.weight import compress_weight

SECTIONS = {
    "storage": None,
    "kernels": "kernels.json",
    "accuracy": "accuracy.json",
    "hardware": "hw-explore.json",
    "e2e": "e2e.json",
}
HOW = {
    "kernels": "nmq bench kernels --shapes llama-7b --layers 3 --batch 1,16,128 --json > {dir}/kernels.json",
    "accuracy": "nmq bench accuracy --json > {dir}/accuracy.json",
    "hardware": "nmq hw explore --model llama-7b --json > {dir}/hw-explore.json",
    "e2e": "nmq bench e2e --model llama-7b --json > {dir}/e2e.json",
}
STORAGE_PATTERNS = ("dense", "4:8", "2:4", "1:4")


def build_report(results: str | Path, out: str | Path) -> dict:
    """Write ``report.html`` and ``report.md`` into ``out``; returns what was included and what was missing."""
    import matplotlib

    matplotlib.use("Agg")
    results, out = Path(results), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}"
    parts, md, missing = [], [], []
    for section, fname in SECTIONS.items():
        data = None
        if fname is not None:
            path = results / fname
            if not path.is_file():
                missing.append(section)
                cmd = HOW[section].format(dir=results)
                parts.append(f"<h2>{section}</h2><p class=missing>No results: {html.escape(str(path))} is missing. "
                             f"Make it with <code>{html.escape(cmd)}</code>.</p>")
                md.append(f"## {section}\n\nmissing: run `{cmd}`\n")
                continue
            data = json.loads(path.read_text())
        title, fig, table = PLOTTERS[section](data)
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{section}' data-plot='{section}' "
                     f"src='data:image/png;base64,{_png(fig)}'/>{_html_table(table)}")
        md.append(f"## {title}\n\n{_md_table(table)}\n")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>nmq report</title><style>{CSS}</style></head>"
            f"<body><h1>nmq report</h1><p>Figures measured on: {html.escape(machine)} unless a section says otherwise. "
            f"Results from {html.escape(str(results))}.</p>{''.join(parts)}</body></html>")
    (out / "report.html").write_text(page)
    (out / "report.md").write_text("# nmq report\n\n" + f"Machine: {machine}\n\n" + "\n".join(md))
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"),
            "sections": [s for s in SECTIONS if s not in missing], "missing": missing}


def _storage(_data):
    import matplotlib.pyplot as plt

    rows = []
    w = torch.randn(16, 4096, generator=torch.Generator().manual_seed(0))
    for pattern in STORAGE_PATTERNS:
        for metadata in (("rank", "index") if pattern != "dense" else ("rank",)):
            s = compress_weight(w, pattern=pattern, bits=4, group_size=128, metadata=metadata).storage()
            rows.append({"format": f"{pattern} int4 g128" + ("" if pattern == "dense" else f" {metadata}"),
                         **{f: s.fields.get(f, 0) / s.weights for f in ("values", "meta", "scales")},
                         "bits/weight": s.bits_per_weight, "x fp16": s.ratio_vs_fp16})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = [0.0] * len(rows)
    for f in ("values", "meta", "scales"):
        vals = [r[f] for r in rows]
        ax.barh([r["format"] for r in rows], vals, left=bottom, label=f)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.axvline(16, color="gray", ls=":")
    ax.set_xlabel("bits per weight (fp16 = 16)")
    ax.legend()
    fig.tight_layout()
    return "Storage per weight by field", fig, rows


def _kernels(data):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    rows = []
    kernels = sorted({(r["kernel"], r["path"]) for r in data})
    for kernel, path in kernels:
        pts = sorted((r["batch"], r["median_ms"], r.get("floor_ms")) for r in data if r["kernel"] == kernel and r["path"] == path)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{kernel} {path}")
        if kernel.startswith("nmq-2:4") and path == "w4a8" and all(p[2] for p in pts):
            ax.plot([p[0] for p in pts], [p[2] for p in pts], ls="--", color="k", label="2:4 int4 bandwidth floor")
        for b, ms, floor in pts:
            rows.append({"kernel": kernel, "path": path, "batch": b, "median_ms": ms, "floor_ms": floor})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch (tokens)")
    ax.set_ylabel("ms per pass over all matrices")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return "Kernel time against batch size, with the bandwidth floor", fig, rows


def _accuracy(data):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [r["row"] for r in data]
    ax.barh(names, [r["perplexity"] for r in data])
    ax.invert_yaxis()
    ax.set_xlabel("held-out perplexity (lower is better)")
    fig.tight_layout()
    rows = [{"row": r["row"], "perplexity": r["perplexity"], "seconds": r["seconds"]} for r in data]
    return "Accuracy of the compression methods (built-in model)", fig, rows


def _hardware(data):
    import matplotlib.pyplot as plt

    # nmq hw explore --json: {"front": [...], "chosen": {...}, "budget": {...}}
    points = (data.get("points") or data.get("front") or []) if isinstance(data, dict) else data
    front = (data.get("pareto") or data.get("front") or []) if isinstance(data, dict) else []
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = []

    def xy(p):
        return p.get("lut", 0), p.get("tokens_per_s", p.get("tokens_per_second", 0))

    if points:
        ax.scatter(*zip(*[xy(p) for p in points]), s=12, label="configurations")
    if front:
        ax.plot(*zip(*sorted(xy(p) for p in front)), color="r", marker="o", label="Pareto front")
        rows = front
    ax.set_xlabel("LUTs")
    ax.set_ylabel("tokens/s (cycle model)")
    ax.legend()
    fig.tight_layout()
    keep = ("rows", "cols", "max_m", "act_buffer", "lut", "ff", "dsp", "bram", "tokens_per_second", "bound",
            "energy_j_per_token")
    meta = data if isinstance(data, dict) else {}
    # Results written before clocks were labelled ran at the assumed clock they record.
    default_mhz = meta.get("clock_mhz", 300.0)
    rows = [{**{k: p.get(k) for k in keep if k in p},
             "clock": f"{p.get('clock_mhz', default_mhz):g} MHz {p.get('clock_kind', 'assumed')}"}
            for p in (rows or points[:20])]
    budget = meta.get("budget", {}).get("name")
    clock = meta.get("clock_source") or f"assumed: {default_mhz:g} MHz"
    title = ("FPGA design space: throughput against resources"
             + (f" (budget {budget}, cycle model)" if budget else "") + f"; clock of the chosen design: {clock}")
    return title, fig, rows


def _e2e(data):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["config"] for r in data]
    a.barh(names, [r["tokens_per_s"] for r in data])
    a.set_xlabel("decode tokens/s")
    b.barh(names, [r.get("peak_rss_gb") or 0 for r in data])
    b.set_xlabel("peak RSS (GB)")
    a.invert_yaxis()
    b.invert_yaxis()
    fig.tight_layout()
    rows = [{**{k: r.get(k) for k in ("config", "backend", "ms_per_token", "tokens_per_s", "prefill_ms", "peak_rss_gb")},
             "clock": _fpga_clock(r)} for r in data]
    return "End-to-end decoding", fig, rows


def _fpga_clock(r: dict) -> str:
    """The clock an ``fpga-model`` row was estimated at and where it came from; "-" for measured CPU rows."""
    if r.get("backend") != "fpga-cycle-model":
        return "-"
    if r.get("clock_source"):
        return f"{r['clock_mhz']:g} MHz, {r['clock_source']}"
    mhz = (r.get("design") or {}).get("clock_mhz", 300.0)
    return f"{mhz:g} MHz, assumed"


PLOTTERS = {"storage": _storage, "kernels": _kernels, "accuracy": _accuracy, "hardware": _hardware, "e2e": _e2e}
CSS = ("body{font-family:sans-serif;max-width:960px;margin:auto;padding:1em}table{border-collapse:collapse;"
       "font-size:12px;margin:0.5em 0 2em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
       ".missing{color:#a00}img{max-width:100%}")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
