"""report.json (the source of truth) and what is rendered from it: report.md and a self-contained report.html.

The HTML embeds every plot and image as base64 PNG, so the file can be mailed
or opened offline. ``styleslim report RUN_DIR`` re-renders md/html from json.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from compressor.io import write_json, write_text

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def validate(report: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (naming the key path) if ``report`` does not fit the schema."""
    import jsonschema

    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))


def load_report(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report.json (run the evaluate stage or `styleslim evaluate` first)")
    import jsonschema

    report = json.loads(path.read_text())
    try:
        validate(report)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(k) for k in exc.absolute_path) or "(top level)"
        raise ValueError(f"{path}: does not match evaluation/report.schema.json at {where}: {exc.message}") from None
    return report


def write_reports(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Validate, then write report.json, report.md and report.html into ``out_dir``."""
    validate(report)
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"report.{name}" for name in ("json", "md", "html")}
    write_json(paths["json"], report)
    render(report, out_dir)
    return paths


def render(report: dict[str, Any], out_dir: Path) -> None:
    """(Re-)write report.md and report.html from a report dict."""
    write_text(Path(out_dir) / "report.md", markdown(report))
    write_text(Path(out_dir) / "report.html", to_html(report))


# ---------------------------------------------------------------- formatting


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    return "–" if value is None else fmt.format(value)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _latency(row: dict[str, Any]) -> dict[str, Any]:
    """The row's latency on its own runtime (torch eager for torch variants)."""
    return row["latency_ms"].get(row["runtime"], {})


def _runtime_label(row: dict[str, Any]) -> str:
    return "torch eager" if row["runtime"] == "torch" else row["runtime"]


TABLE_HEADER = [
    "", "variant", "runtime", "params", "MMACs", "size", "style Δ%", "content Δ%", "PSNR dB", "SSIM",
    "p50 ms", "p90 ms", "peak RSS",
]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in report["variants"]:
        q, lat = r["quality"], _latency(r)
        psnr = q.get("psnr_vs_teacher")
        if psnr is None and q.get("ssim_vs_teacher") is not None:
            psnr_txt = "identical"
        else:
            psnr_txt = _num(psnr, "{:.1f}")
        mem = r.get("memory") or {}
        rows.append([
            "★" if r.get("pareto") else "",
            r["name"],
            _runtime_label(r),
            _num(r.get("params"), "{:,}"),
            _num(r["macs"] / 1e6 if r.get("macs") is not None else None, "{:,.0f}"),
            _human_bytes(r.get("size_bytes")),
            _num(q.get("style_degradation_pct"), "{:+.1f}"),
            _num(q.get("content_degradation_pct"), "{:+.1f}"),
            psnr_txt,
            _num(q.get("ssim_vs_teacher"), "{:.3f}"),
            _num(lat.get("p50"), "{:.1f}") if lat.get("p50") is not None else lat.get("note", "–"),
            _num(lat.get("p90"), "{:.1f}"),
            _human_bytes(mem.get("peak_rss_bytes")),
        ])
    return rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _preamble(report: dict[str, Any]) -> list[str]:
    m, s = report["machine"], report["settings"]
    return [
        f"Loss network (judge): **VGG19 {report['loss_network']['weights']}**",
        f"Reference: `{report['reference']}` · style: `{report.get('style')}` · "
        f"{len(report['eval_images'])} held-out eval image(s) at {s['size']} px",
        f"Machine: {m['cpu_model']}, {m['usable_cores']} usable / {m['logical_cores']} logical cores, "
        f"torch {m['torch']}, onnxruntime {m.get('onnxruntime')}",
        f"Latency: {s['warmup']} warm-up + {s['latency_runs']} timed runs per variant, round-robin in one process, "
        f"{s['threads']} thread(s), sizes {s['latency_sizes']}; ★ = Pareto-optimal (latency p50 vs mean of "
        "style/content degradation).",
    ]


def markdown(report: dict[str, Any]) -> str:
    """The table a person reads first, then exports, latency per size, errors."""
    parts = ["# styleslim evaluation report", "", *[f"- {line}" for line in _preamble(report)], ""]
    parts += [md_table(TABLE_HEADER, table_rows(report)), ""]
    parts.append("Δ% = degradation of the mean loss vs the reference (lower is better); PSNR/SSIM vs the "
                 "reference's output; peak RSS = whole fresh process incl. interpreter (see report.json memory).")
    if report["exports"]:
        parts += ["", "## Exported artifacts", ""]
        rows = [[e["format"], str(e.get("precision")), e["path"], _human_bytes(e["size_bytes"]),
                 str(e["parity"]["runtime"]), _num(e["parity"]["psnr_db"], "{:.1f}"), str(e["parity"]["passed"])]
                for e in report["exports"]]
        parts.append(md_table(["format", "precision", "path", "size", "parity runtime", "parity PSNR", "passed"], rows))
    ranked = [r for r in report["variants"] if r["quality"].get("spearman")]
    if ranked:
        parts += ["", "## Loss-network variants (Spearman rank correlation of losses vs the reference VGG19)", ""]
        parts.append(md_table(["variant", "style ρ", "content ρ", "image pairs"], [
            [r["name"], f"{r['quality']['spearman']['style_spearman']:.3f}",
             f"{r['quality']['spearman']['content_spearman']:.3f}", str(r["quality"]["spearman"]["pairs"])]
            for r in ranked]))
    sweep = [(r["name"], e) for r in report["variants"] for e in r["latency_sweep"]]
    if len({e["size"] for _, e in sweep}) > 1:
        parts += ["", "## Latency by input size", ""]
        parts.append(md_table(["variant", "runtime", "size", "p50 ms", "p90 ms", "runs", "threads"], [
            [n, e["runtime"], str(e["size"]), f"{e['p50']:.1f}", f"{e['p90']:.1f}", str(e["runs"]), str(e["threads"])]
            for n, e in sweep]))
    errors = [(r["name"], e) for r in report["variants"] for e in r["errors"]]
    if errors:
        parts += ["", "## Problems", ""] + [f"- `{n}`: {e}" for n, e in errors]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- HTML


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def scatter_plot(report: dict[str, Any]) -> str | None:
    """Quality (mean degradation %) vs latency p50, Pareto frontier drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["name"], _latency(r).get("p50"), r["quality"].get("degradation_pct"), r.get("pareto"))
           for r in report["variants"]]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, lat, deg, star in pts:
        ax.scatter(lat, deg, marker="*" if star else "o", s=160 if star else 50, color="C1" if star else "C0")
        ax.annotate(name, (lat, deg), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = sorted((lat, deg) for _, lat, deg, star in pts if star)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="C1", label="Pareto frontier")
        ax.legend()
    ax.set_xlabel("latency p50 (ms, own runtime)")
    ax.set_ylabel("mean style/content degradation (%)")
    ax.set_title(f"quality vs latency — judged by VGG19 {report['loss_network']['weights']}", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def size_plot(report: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["variants"] if r.get("size_bytes")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1))
    ax.barh([r["name"] for r in rows], [r["size_bytes"] / 1e6 for r in rows], color="C2")
    ax.invert_yaxis()
    ax.set_xlabel("size on disk (MB)")
    return _png(fig)


def widths_plot(report: dict[str, Any]) -> str | None:
    """Per-layer channel widths of every torch variant that has a spec (the pruned ones differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in report["variants"] if r.get("widths")]
    if not rows:
        return None
    rows = [r for r in rows if r["family"] == rows[0]["family"]]
    layers = list(rows[0]["widths"])
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * len(layers)), 4))
    step = 0.8 / len(rows)
    for k, r in enumerate(rows):
        ax.bar(np.arange(len(layers)) + k * step, [r["widths"].get(name, 0) for name in layers], step, label=r["name"])
    ax.set_xticks(np.arange(len(layers)) + 0.4 - step / 2, layers, rotation=60, fontsize=8)
    ax.set_ylabel("output channels")
    ax.legend(fontsize=8)
    return _png(fig)


def grid_plot(report: dict[str, Any], max_images: int = 3) -> str | None:
    """content | reference | each variant, for a few eval images (read from the saved PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    entries = [e for e in report["images"]["grid"] if Path(e["content"]).is_file()][:max_images]
    if not entries:
        return None
    names = [n for n in entries[0]["outputs"]]
    cols = 1 + len(names)
    fig, axes = plt.subplots(len(entries), cols, figsize=(2.2 * cols, 2.3 * len(entries)), squeeze=False)
    for i, entry in enumerate(entries):
        panels = [("content", entry["content"])] + [(n, entry["outputs"].get(n)) for n in names]
        for ax, (title, path) in zip(axes[i], panels):
            if path and Path(path).is_file():
                ax.imshow(Image.open(path))
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def to_html(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    body = "".join(
        f'<tr class="{"pareto" if cells[0] else ""}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for cells in table_rows(report)
    )
    sections = [("Quality vs latency", scatter_plot(report)), ("Size on disk", size_plot(report)),
                ("Channel widths per layer", widths_plot(report)), ("Images", grid_plot(report))]
    figures = "".join(f"<h2>{title}</h2>{_img(b64, title)}" for title, b64 in sections if b64)
    exports = ""
    if report["exports"]:
        erows = "".join(
            f"<tr><td>{html.escape(str(e['format']))}</td><td>{html.escape(str(e.get('precision')))}</td>"
            f"<td>{html.escape(e['path'])}</td><td>{_human_bytes(e['size_bytes'])}</td>"
            f"<td>{html.escape(str(e['parity']['runtime']))}</td><td>{_num(e['parity']['psnr_db'], '{:.1f}')}</td>"
            f"<td>{html.escape(str(e['parity']['passed']))}</td></tr>"
            for e in report["exports"]
        )
        exports = ("<h2>Exported artifacts</h2><table><tr><th>format</th><th>precision</th><th>path</th><th>size</th>"
                   f"<th>parity runtime</th><th>parity PSNR</th><th>passed</th></tr>{erows}</table>")
    errors = "".join(f"<li><code>{html.escape(r['name'])}</code>: {html.escape(e)}</li>"
                     for r in report["variants"] for e in r["errors"])
    preamble = "".join(f"<li>{html.escape(line).replace('**', '')}</li>" for line in _preamble(report))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>styleslim report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
tr.pareto {{ background: #fff4d6; font-weight: 600; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>styleslim evaluation report</h1>
<ul>{preamble}</ul>
<table><tr>{head}</tr>{body}</table>
{exports}
{figures}
{f"<h2>Problems</h2><ul>{errors}</ul>" if errors else ""}
</body></html>
"""


# ---------------------------------------------------------------- compare


def compare(report_a: dict[str, Any], report_b: dict[str, Any], label_a: str = "A", label_b: str = "B") -> str:
    """Markdown: the variants of two runs side by side (matched by name), with B/A latency ratios."""
    by_a = {r["name"]: r for r in report_a["variants"]}
    by_b = {r["name"]: r for r in report_b["variants"]}
    names = list(by_a) + [n for n in by_b if n not in by_a]
    header = ["variant"] + [f"{c} {lab}" for c in ("style Δ%", "PSNR", "p50 ms", "size") for lab in (label_a, label_b)]
    header.append(f"p50 {label_b}/{label_a}")
    rows = []
    for name in names:
        a, b = by_a.get(name), by_b.get(name)
        cells = [name]
        for get in (lambda r: _num(r["quality"].get("style_degradation_pct"), "{:+.1f}"),
                    lambda r: _num(r["quality"].get("psnr_vs_teacher"), "{:.1f}"),
                    lambda r: _num(_latency(r).get("p50"), "{:.1f}"),
                    lambda r: _human_bytes(r.get("size_bytes"))):
            cells += [get(a) if a else "–", get(b) if b else "–"]
        pa = _latency(a).get("p50") if a else None
        pb = _latency(b).get("p50") if b else None
        cells.append(f"{pb / pa:.2f}×" if pa and pb else "–")
        rows.append(cells)
    lines = [f"# {label_a} vs {label_b}", ""]
    for lab, rep in ((label_a, report_a), (label_b, report_b)):
        lines.append(f"- {lab}: judged by VGG19 {rep['loss_network']['weights']}; "
                     f"{rep['machine']['cpu_model']}, {rep['settings']['threads']} thread(s)")
    if report_a["loss_network"]["weights"] != report_b["loss_network"]["weights"]:
        lines.append("- **warning**: the two runs were judged by different loss networks; quality is not comparable")
    if report_a["machine"]["cpu_model"] != report_b["machine"]["cpu_model"]:
        lines.append("- **warning**: measured on different CPUs; latency ratios across runs are not fair")
    return "\n".join(lines + ["", md_table(header, rows)]) + "\n"
