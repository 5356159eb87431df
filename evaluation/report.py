"""report.json (the source of truth) and what is rendered from it: report.md and a self-contained report.html.

Fidelity first: the table leads with PSNR / SSIM vs the teacher, and only that
measure (``ranking.measure``) drives the Pareto frontier and the verdict. The
HTML embeds every plot and image as a base64 PNG and has no external CSS or
JS, so it opens offline and prints; the Markdown links the same PNGs, written
under the evaluation folder. ``styleslim report RUN_DIR`` re-renders both from json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from compressor.io import atomic_write, write_json, write_text

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
DISTANCES = ("perceptual", "style", "vector")  # the judge's, as compressor.fidelity names them
GRADES = ("indistinguishable", "close", "different")  # compressor.fidelity's, best first (it imports torch)
MARKERS = {"torch": "o", "onnxruntime": "s", "litert": "^", "coreml": "D"}
COLORS = {"torch": "C0", "onnxruntime": "C1", "litert": "C2", "coreml": "C4"}
CROP = 96  # side (px) of the full-resolution crop in the image grid
DELTA_LEGEND = ("style Δ% / content Δ% = signed change of the loss network's style / content loss vs the teacher's "
                "(+ = higher, − = lower; against the teacher's own picture, style Δ% is in % of that picture's Gram "
                "energy). Neither sign means closer to the teacher; only the judge's distances say that.")


def validate(report: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (naming the key path) if ``report`` does not fit the schema."""
    import jsonschema

    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))


def load_report(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report.json (run the evaluate stage or `styleslim evaluate` first)")
    import jsonschema

    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-run the evaluation to rewrite it") from None
    try:
        validate(report)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(k) for k in exc.absolute_path) or "(top level)"
        raise ValueError(f"{path}: does not match evaluation/report.schema.json at {where}: {exc.message} "
                         "(re-run the evaluation to rewrite it)") from None
    return report


def write_reports(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Validate, then write report.json, report.md and report.html into ``out_dir``."""
    validate(report)
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"report.{name}" for name in ("json", "md", "html")}
    write_json(paths["json"], report)
    render(report, out_dir)
    return paths


def check_paths(report: dict[str, Any], out_dir: Path) -> None:
    """Refuse a report whose file paths leave ``out_dir``: a report folder is sent around, so its report.json is
    data that may have been edited, and rendering reads and writes only inside the folder it came in."""
    images = report.get("images") or {}
    named = [("images.work_dir", images.get("work_dir", "."))]
    for i, entry in enumerate(images.get("grid", [])):
        named.append((f"images.grid.{i}.content", entry.get("content", ".")))
        for kind in ("outputs", "diffs"):
            named += [(f"images.grid.{i}.{kind}.{name}", rel) for name, rel in entry.get(kind, {}).items()]
    root = Path(out_dir).resolve()
    for key, rel in named:
        if Path(rel).is_absolute() or not (root / rel).resolve().is_relative_to(root):
            raise ValueError(f"report.json: {key}: {rel!r} leaves the report's folder (re-run the evaluation to "
                             "rewrite it)")


def render(report: dict[str, Any], out_dir: Path) -> None:
    """(Re-)write report.md and report.html (and the plots the Markdown links) from a report dict."""
    out_dir = Path(out_dir)
    check_paths(report, out_dir)
    plots = {"frontier": frontier_plot(report), "size": size_plot(report), "widths": widths_plot(report)}
    links = {}
    for name, png in plots.items():
        if png:
            rel = Path(report["images"]["work_dir"]) / "plots" / f"{name}.png"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out_dir / rel, lambda p, png=png: p.write_bytes(png))
            links[name] = rel.as_posix()
    write_text(out_dir / "report.md", markdown(report, links))
    write_text(out_dir / "report.html", to_html(report, out_dir, plots))


# ---------------------------------------------------------------- facts and formatting


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


def fidelity_db(row: dict[str, Any]) -> float | None:
    """The ranking measure (mean PSNR vs the teacher); inf when identical, None when not measured."""
    q = row["quality"]
    return math.inf if q.get("identical_to_teacher") else q.get("psnr_vs_teacher")


def _psnr_text(value: float | None, identical: bool = False) -> str:
    return "≡ teacher" if identical or value == math.inf else _num(value, "{:.1f}")


def _latency(row: dict[str, Any], size: int | None = None) -> dict[str, Any]:
    """The row's latency on its own runtime: at ``size`` (from the sweep), or at the first latency size."""
    if size is None:
        return row["latency_ms"].get(row["runtime"], {})
    return next((e for e in row["latency_sweep"] if e["size"] == size and e["runtime"] == row["runtime"]), {})


def _runtime_label(row: dict[str, Any]) -> str:
    return "torch eager" if row["runtime"] == "torch" else row["runtime"]


def runnable(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Variants measured on this machine; the ones it cannot run (Core ML on Linux) get their own table."""
    return [r for r in report["variants"] if not r.get("structure") and "not measurable" not in
            r["quality"].get("note", "")]


def not_runnable(report: dict[str, Any]) -> list[dict[str, Any]]:
    ids = {id(r) for r in runnable(report)}
    return [r for r in report["variants"] if id(r) not in ids]


def machine_line(report: dict[str, Any]) -> str:
    """Where the numbers were measured, in one line."""
    m, s = report["machine"], report["settings"]
    versions = [f"Python {m['python']}", f"torch {m['torch']}"]
    versions += [f"{k} {m[k]}" for k in ("onnxruntime", "ai_edge_litert") if m.get(k)]
    vnni = {True: "int8 dot products (VNNI) · ", False: "no VNNI: int8 without dot-product instructions · "}
    return (f"{m['cpu_model']} · {m['usable_cores']} usable / {m['logical_cores']} logical cores · "
            f"{vnni.get(m.get('x86_vnni'), '')}{s['threads']} thread(s) · {m['platform']} · " + " · ".join(versions))


def _browser_lines(report: dict[str, Any]) -> list[str]:
    """What ran in the browser, as each web runtime reported it (threads only where the page was isolated), and
    what the browser costs: each web row's p50 over its artifact's on the native runtime."""
    seen: dict[str, dict[str, Any]] = {}
    cost: dict[str, list[float]] = {}
    native = {r["sha256"]: _latency(r).get("p50") for r in report["variants"]
              if r["kind"] == "artifact" and not r.get("runtime_info")}
    for row in report["variants"]:
        if row.get("runtime_info"):
            seen.setdefault(row["runtime"], row["runtime_info"])
            web, own = _latency(row).get("p50"), native.get(row["sha256"])
            if web and own:
                cost.setdefault(row["runtime"], []).append(web / own)

    def described(name: str, info: dict[str, Any]) -> str:
        ratios = sorted(cost.get(name, []))
        span = (f"{ratios[0]:.1f}×" if ratios[0] == ratios[-1] else f"{ratios[0]:.1f}–{ratios[-1]:.1f}×") if ratios \
            else None
        return (f"{name} {info.get('version', '')} on {info.get('provider')} with {info.get('threads')} thread(s)"
                f"{', SIMD' if info.get('simd') else ''}{'' if info.get('cross_origin_isolated') else ', not isolated'}"
                + (f": {span} the same artifact's native p50" if span else "")).replace("  ", " ")

    if not seen:
        return []
    browser = next(iter(seen.values())).get("browser", "Chromium")
    return [f"Browser: headless {browser}, timed inside the page (performance.now()): "
            + "; ".join(described(name, info) for name, info in seen.items())]


def peer(report: dict[str, Any]) -> dict[str, Any] | None:
    """The first peer (``evaluate.peers``) with a latency: the yardstick of the × peer column."""
    return next((r for r in report["variants"] if r["kind"] == "peer" and _latency(r).get("p50")), None)


def _speedup(row: dict[str, Any], yardstick: dict[str, Any] | None) -> float | None:
    mine = _latency(row).get("p50")
    return yardstick and mine and _latency(yardstick)["p50"] / mine


def fidelity_text(row: dict[str, Any]) -> str:
    """'close (2.1 bands, 24.7 dB)': the grade, the perceptual distance in bands and the PSNR column, and any photo
    graded worse in its own band (``photo_caveat``)."""
    judged = row["quality"].get("judge")
    psnr = _psnr_text(fidelity_db(row)) if fidelity_db(row) is not None else "–"
    if not judged:
        return f"PSNR {psnr} dB"
    return f"{judged['grade']} ({judged['perceptual_bands']:.2f} bands, {psnr} dB{photo_caveat(row)})"


def photo_caveat(row: dict[str, Any], grade: str | None = None) -> str:
    """'; different on rocket.jpg in its own band': each held-out photo whose grade in its own band and shift is
    worse than ``grade`` (default: the pooled grade; one photo's wide band can cover another's error in the mean)."""
    limit = GRADES.index(grade or row["quality"]["judge"]["grade"])
    pictures = row["quality"].get("per_image", [])
    worse = [f for f in pictures if GRADES.index(f.get("judge", {}).get("grade", GRADES[0])) > limit]
    if len(worse) > 3:  # many photos, or a multi-style teacher's picture per photo and style: counted
        worst = max((f["judge"]["grade"] for f in worse), key=GRADES.index)
        return f"; {len(worse)} of {len(pictures)} pictures worse in their own band, {worst} the worst"
    named = [f"{f['judge']['grade']} on {f['image']}" + (f" · style {f['style']}" if "style" in f else "")
             for f in worse]
    return f"; {', '.join(named)} in its own band" if named else ""


def _peer_line(report: dict[str, Any]) -> list[str]:
    yardstick = peer(report)
    if yardstick is None:
        return []
    line = (f"Peer: `{yardstick['name']}` ({_runtime_label(yardstick)}), p50 {_latency(yardstick)['p50']:.1f} ms, "
            f"{fidelity_text(yardstick)} vs the teacher; measured beside the variants, never ranked")
    verdict = next((r for r in report["variants"] if r.get("verdict")), None)
    if verdict is not None:
        line += f". The verdict is {_speedup(verdict, yardstick):.2f}× the peer's speed, {fidelity_text(verdict)}"
    artifacts = [r for r in report["variants"] if r["kind"] == "artifact" and _speedup(r, yardstick)
                 and grade_of(r) is not None]
    if artifacts:
        fastest = max(artifacts, key=lambda r: _speedup(r, yardstick))
        line += (f". Fastest artifact: `{fastest['name']}` ({_runtime_label(fastest)}), "
                 f"{_speedup(fastest, yardstick):.2f}× the peer's speed, {fidelity_text(fastest)}")
    return [line]


def search_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The student search's candidates: spec, cost, latency and fidelity of each as deployed (search.json)."""
    search = report.get("search")
    if not search:
        return [], []
    header = ["", "candidate", "spec", "MMACs", "size", f"p50 ms ({search['runtime']} {search['mode']})",
              "grade", "perceptual (bands)", "style (bands)", "PSNR dB", "SSIM", "perceptual fp32 (bands)"]
    rows = []
    for c in search["candidates"]:
        mark = " ".join(m for m, on in (("winner", c["candidate"] == search["winner"]), ("★", c["pareto"])) if on)
        spec = ", ".join(f"{k}={v}" for k, v in c["spec"].items())
        spec += " (teacher's trunk)" if c.get("init") == "teacher_trunk" else ""
        rows.append([mark, f"{c['candidate']}: {c['family']}", spec, _num(c["macs"] / 1e6, "{:,.0f}"),
                     _human_bytes(c["size_bytes"]), _num(c["latency_ms"]["p50"], "{:.1f}"), c["judge"]["grade"],
                     _num(c["judge"]["perceptual_bands"], "{:.2f}"), _num(c["judge"]["style_bands"], "{:.2f}"),
                     _psnr_text(c["psnr_vs_teacher"]), _num(c["ssim_vs_teacher"], "{:.3f}"),
                     _num(c["fp32_judge"]["perceptual_bands"], "{:.2f}")])
    return header, rows


def search_note(report: dict[str, Any]) -> str:
    search = report["search"]
    need = search["grade"] + (f" and PSNR ≥ {search['min_psnr_db']:g} dB" if search.get("min_psnr_db") else "")
    how = (f"the fastest graded {need}" if search["winner_within_budget"] else
           f"none was graded {need}, so the nearest to the teacher in perceptual bands won")
    return (f"Each candidate was distilled for {search['steps']} steps, deployed on {search['runtime']} "
            f"({search['mode']}) at {search['size']} px and judged against the teacher on validation photos "
            f"(not the held-out ones above), in bands of the teacher's own variation on them. Winner: candidate "
            f"{search['winner']}, {how}; the distill stage trained it on. ★ = frontier of latency vs perceptual "
            "distance.")


def shift_in_bands(calibration: dict[str, Any], distance: str) -> float | None:
    """The teacher's own 2-px-shift change in its band units (the close limit); None for a zero band."""
    band = calibration["band"].get(distance, 0.0)  # reports before the vector distance lack it
    return calibration["shift"][distance] / band if band > 0 else None


def _judge_lines(report: dict[str, Any]) -> list[str]:
    """Which network judged, the teacher's calibration per style, and a warning when the teacher is degenerate."""
    judge = report.get("judge") or {}
    lines = []
    if judge.get("teacher_warning"):
        lines.append(f"**warning**: {judge['teacher_warning']} Every grade below measures closeness to it.")
    if judge.get("network"):
        cal = "; ".join(
            (f"style {c['style']}: " if c.get("style") is not None else "")
            + f"band {c['band']['perceptual']:.3g} perceptual / {c['band']['style']:.3g} style / "
              f"{c['band'].get('vector', 0):.3g} vector, 2-px shift {shift_in_bands(c, 'perceptual'):.1f} / "
              f"{shift_in_bands(c, 'style'):.1f} / {shift_in_bands(c, 'vector') or 0:.1f} bands"
            for c in judge.get("calibration", []) if c["band"]["perceptual"] > 0 and c["band"]["style"] > 0)
        lines.append(f"Judged by {judge['description']}. Distances in units of the teacher's own same-picture band "
                     f"(its output for the photo re-saved as JPEG q95 or ±1 grey level: 1 band)"
                     + (f"; {cal}" if cal else "") + ".")
    return lines


def _ship_lines(report: dict[str, Any]) -> list[str]:
    """What to ship on each runtime: the fastest indistinguishable and the fastest close variant, with the
    speed-up over the teacher exported to that runtime."""
    lines = []
    for entry in report["ranking"].get("per_runtime", []):
        picks = []
        for worst in ("indistinguishable", "close"):
            pick = entry.get(worst)
            if pick is None:
                picks.append(f"nothing {worst}")
                continue
            speed = (f"{pick['speedup_vs_teacher']:.2f}× the teacher on {entry['runtime']}"
                     if pick.get("speedup_vs_teacher") else "no teacher baseline on this runtime")
            speed += photo_caveat(next(r for r in report["variants"] if r["name"] == pick["name"]), worst)
            picks.append(f"{worst}: `{pick['name']}` ({speed})")
        lines.append(f"{_runtime_label(entry)}: " + "; ".join(picks))
    return lines


def _preamble(report: dict[str, Any]) -> list[str]:
    s, rk = report["settings"], report["ranking"]
    need = rk.get("grade", "close") + (f" and PSNR ≥ {rk['min_psnr_db']:g} dB" if rk.get("min_psnr_db") else "")
    if rk["verdict"]:
        row = next(r for r in report["variants"] if r["name"] == rk["verdict"])
        verdict = (f"**{rk['verdict']}** ({_runtime_label(row)}) — the fastest variant graded {need}: "
                   f"{fidelity_text(row)}")
    else:
        closest = next((r for r in report["variants"] if r["name"] == rk.get("closest")), None)
        verdict = f"no variant is graded {need}" + (
            f"; the closest is `{closest['name']}`, {fidelity_text(closest)}" if closest else "")
    return [
        f"Verdict: {verdict}",
        *[f"Ship on {line}" for line in _ship_lines(report)],
        *_judge_lines(report),
        (f"Ranking: {rk.get('measure_description', rk['measure'])}. "
         "★ = Pareto frontier of latency p50 (own runtime) vs that distance. PSNR/SSIM are columns, not verdicts."),
        (f"Teacher: `{report['reference']}` · style-loss reference: "
         + (f"`{report.get('style')}` · " if report.get("style_reference", "image") == "image" else
            "the teacher's own picture of each photo (its styles have no image) · ")
         + f"{len(report['eval_images'])} held-out photo(s) at {s['size']} px: "
         + ", ".join(f"`{Path(p).name}`" for p in report["eval_images"])
         + (f", each in styles {', '.join(s['styles'])} of the teacher" if s.get("styles") else "")),
        *_peer_line(report),
        f"Machine: {machine_line(report)}",
        *([f"Run: {cost} (each stage's last run, before this evaluation)"] if (cost := run_cost(report)) else []),
        *_browser_lines(report),
        (f"Latency: {s['warmup']} warm-up + {s['latency_runs']} timed runs per variant and size, round-robin in one "
         f"process. Loss deltas judged by VGG19 {report['loss_network']['weights']}"
         + (" (the random fallback: read them as texture statistics, not ImageNet perception)"
            if report["loss_network"]["weights"].startswith("random") else "") + "."),
    ]


def run_cost(report: dict[str, Any]) -> str | None:
    """'model 2 s · distill 3.5 min': what the run cost before this evaluation, stage by stage (a skipped stage's
    own last run); None for a report of no recipe run."""
    seconds = report.get("run", {}).get("stage_seconds")
    if not seconds:
        return None
    return " · ".join(f"{stage} {s:.0f} s" if s < 90 else f"{stage} {s / 60:.1f} min" for stage, s in seconds.items())


def table_header(report: dict[str, Any]) -> list[str]:
    sizes = report["settings"]["latency_sizes"]
    return (["rank", "variant", "runtime", "grade", "perceptual", "style", "vector", "PSNR dB", "SSIM", "size",
             "MMACs"]
            + [f"p50 ms @{s}" for s in sizes] + (["× peer"] if peer(report) else [])
            + ["p90 ms", "peak RSS", "style Δ%", "content Δ%"])


def _rank_cell(row: dict[str, Any]) -> str:
    return " ".join(mark for mark, on in (("verdict", row.get("verdict")), ("★", row.get("pareto"))) if on)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Fidelity first, then cost, latency per size, then the signed loss deltas."""
    rows = []
    yardstick = peer(report)
    for r in runnable(report):
        q = r["quality"]
        mem = r.get("memory") or {}
        if q.get("identical_to_teacher"):
            psnr = "≡ teacher"
        else:
            psnr = _num(q.get("psnr_vs_teacher"), "{:.1f}")
        latency = []
        for size in report["settings"]["latency_sizes"]:
            lat = _latency(r, size)
            fixed = not lat and r["kind"] == "artifact" and r["latency_sweep"]  # timed at its export size only
            latency.append("n/a" if fixed else _num(lat.get("p50"), "{:.1f}"))
        judged = q.get("judge") or {}
        rows.append([
            _rank_cell(r),
            r["name"],
            _runtime_label(r),
            judged.get("grade", "–"),
            _num(judged.get("perceptual_bands"), "{:.2f}"),
            _num(judged.get("style_bands"), "{:.2f}"),
            _num(judged.get("vector_bands"), "{:.2f}"),
            psnr,
            _num(q.get("ssim_vs_teacher"), "{:.3f}"),
            _human_bytes(r.get("size_bytes")),
            _num(r["macs"] / 1e6 if r.get("macs") is not None else None, "{:,.0f}"),
            *latency,
            *([_num(_speedup(r, yardstick), "{:.2f}×")] if yardstick else []),
            _num(_latency(r).get("p90"), "{:.1f}"),
            _human_bytes(mem.get("peak_rss_bytes")),
            _num(q.get("style_degradation_pct"), "{:+.1f}"),
            _num(q.get("content_degradation_pct"), "{:+.1f}"),
        ])
    return rows


def _also(row: dict[str, Any]) -> list[str]:
    """The other paths holding the same content as this row (evaluated once)."""
    return [p for p in row.get("paths", []) if p != row["path"]]


FIXED_NOTE = "n/a latency: a fixed-shape artifact runs only at the size it was exported for."
COREML_NOTE = ("Core ML predictions need macOS (coremltools runs them only there); on Linux each package's "
               "structure (inputs, outputs, ops), weight dtypes and size are verified.")
COREML_HEADER = ["variant", "precision", "size", "weight dtypes", "ops", "input", "output", "structure"]


def _shapes(io: list[dict]) -> str:
    return " ".join("×".join(str(d) for d in x.get("shape", [])) for x in io) or "–"


def _weights(structure: dict[str, Any]) -> str:
    """Compressed weight tensors by kind ("12 × 16-entry LUT"), then the dtypes of the plain ones."""
    kinds = [f"{n} × {kind}" for kind, n in structure.get("compressed_weights", {}).items()]
    plain = ", ".join(structure.get("weight_dtypes", []))
    return "; ".join(kinds + ([f"other: {plain}" if kinds else plain] if plain else [])) or "–"


def coreml_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in not_runnable(report):
        st = r.get("structure") or {}
        rows.append([r["name"], str(r.get("precision") or "–"), _human_bytes(r.get("size_bytes")),
                     _weights(st), _num(st.get("op_count"), "{}"),
                     _shapes(st.get("inputs", [])), _shapes(st.get("outputs", [])),
                     "verified" if st.get("verified") else "not verified"])
    return rows


def _fidelity_rows(report: dict[str, Any], key: str, label) -> tuple[list[str], list[list[str]]]:
    """One row per compared variant, one cell per entry of ``quality[key]`` (named by ``label``): the judge's
    distances in bands where judged, then PSNR / SSIM, then the entry's grade where it has one."""
    labels: list[str] = []
    rows = []
    for r in runnable(report):
        per = {label(f): f for f in r["quality"].get(key, [])}
        if not per or r["name"] == report["reference"]:
            continue
        labels = labels or list(per)
        rows.append([r["name"]] + [_fidelity_cell(per[n]) if n in per else "–" for n in labels])
    cells = [f for r in runnable(report) for f in r["quality"].get(key, [])]
    what = "PSNR dB / SSIM"
    if any("perceptual_bands" in f.get("judge", {}) for f in cells):
        what = f"perceptual / style / vector bands · {what}"
    if any("grade" in f.get("judge", {}) for f in cells):
        what += " · grade in the photo's own band" if key == "per_image" else " · grade"
    return ["variant"] + [f"{n}: {what}" for n in labels], rows


def _fidelity_cell(f: dict[str, Any]) -> str:
    judged = f.get("judge", {})
    bands = " / ".join(f"{judged[f'{d}_bands']:.2f}" for d in DISTANCES) + " · " if "perceptual_bands" in judged else ""
    graded = f" · {judged['grade']}" if "grade" in judged else ""
    return (f"{bands}{_psnr_text(f['psnr_vs_teacher'], f['psnr_vs_teacher'] is None)} / {f['ssim_vs_teacher']:.3f}"
            f"{graded}")


def photo_shift_note(report: dict[str, Any]) -> str | None:
    """The teacher's own 2-px shift photo by photo, in the bands of the whole set (one judged style only): the
    per-photo distances' yardstick, which differs widely by photo; *close* asks for their mean."""
    calibrations = report.get("judge", {}).get("calibration", [])
    if len(calibrations) != 1 or len(calibrations[0].get("per_photo", [])) < 2:
        return None
    cal = calibrations[0]
    shifts = "; ".join(f"{p['image']} " + " / ".join(f"{p['shift_bands'][d]:.2f}" for d in DISTANCES)
                       for p in cal["per_photo"])
    own = "; ".join(f"{p['image']} " + " / ".join(f"{p['band'][d] / cal['band'][d]:.2f}" if cal["band"][d] > 0
                                                  else "–" for d in DISTANCES) for p in cal["per_photo"])
    return (f"The teacher's own {cal['shift_px']}-px shift photo by photo, perceptual / style / vector in the same "
            f"bands: {shifts}. A variant is close within their mean; on each photo, set its distances beside that "
            f"photo's own shift. Each photo's own band, in the same bands: {own}. The grade in each cell is in that "
            "photo's own band and shift; the headline grade pools the photos.")


def per_image_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Fidelity per held-out photo (and per style, when several were judged)."""
    return _fidelity_rows(report, "per_image", lambda f: f"{f['image']} · style {f['style']}" if "style" in f
                          else f["image"])


def per_style_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Mean fidelity per judged style of a multi-style teacher (empty when one style was judged)."""
    return _fidelity_rows(report, "per_style", lambda f: f"style {f['style']}")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def grid_variants(report: dict[str, Any]) -> list[str]:
    """Who appears in the image grid: the teacher, then the verdict and the frontier, fastest first."""
    rk = report["ranking"]
    names = [report["reference"]] + ([rk["verdict"]] if rk["verdict"] else []) + rk["frontier"]
    return list(dict.fromkeys(names))


def _image_fidelity(report: dict[str, Any], name: str, image: str) -> dict[str, Any]:
    row = next((r for r in report["variants"] if r["name"] == name), None)
    per = (row or {}).get("quality", {}).get("per_image", [])
    return next((f for f in per if f["image"] == image), {})  # the first judged style: the one the grid shows


def _caption(report: dict[str, Any], name: str, image: str) -> str:
    if name == report["reference"]:
        return f"{name}: the reference"
    f = _image_fidelity(report, name, image)
    psnr = _psnr_text(f.get("psnr_vs_teacher"), f.get("psnr_vs_teacher") is None and "ssim_vs_teacher" in f)
    judged = f" perceptual {f['judge']['perceptual']:.3g}, style {f['judge']['style']:.3g};" if "judge" in f else ""
    return f"{name}:{judged} PSNR {psnr} dB, SSIM {_num(f.get('ssim_vs_teacher'), '{:.3f}')}"


def markdown(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """Verdict and the fidelity-first table, Core ML checks, per-photo fidelity, plots, images, the rest."""
    plots = plots or {}
    parts = ["# styleslim evaluation report", "", *[f"- {line}" for line in _preamble(report)], ""]
    parts += [md_table(table_header(report), table_rows(report)), ""]
    parts.append("perceptual / style / vector: the judge's distances from the teacher's picture in the teacher's "
                 "same-picture bands (0 = identical, 1 = as far as the teacher from itself); vector, its style "
                 "vector, is never a training loss (the independent check). "
                 f"PSNR / SSIM: the variant's output vs the teacher's (higher = closer). {DELTA_LEGEND} "
                 f"{FIXED_NOTE} peak RSS = whole fresh process incl. interpreter, at the first timed size "
                 "(a fixed-shape artifact at its own; report.json memory.size).")
    twins = [(r["name"], _also(r)) for r in report["variants"] if _also(r)]
    if twins:
        parts += ["", "Same content, evaluated once: " + "; ".join(
            f"`{n}` is also " + ", ".join(f"`{p}`" for p in also) for n, also in twins) + "."]
    if not_runnable(report):
        parts += ["", "## Core ML packages", "", COREML_NOTE, "", md_table(COREML_HEADER, coreml_rows(report))]
    header, rows = search_rows(report)
    if rows:
        parts += ["", "## Student search", "", search_note(report), "", md_table(header, rows)]
    header, rows = per_style_rows(report)
    if rows:
        parts += ["", "## Fidelity per style", "", md_table(header, rows)]
    header, rows = per_image_rows(report)
    if rows:
        note = photo_shift_note(report)
        parts += ["", "## Fidelity per held-out photo", "", md_table(header, rows)] + (["", note] if note else [])
    for name, title in (("frontier", "Latency vs fidelity"), ("size", "Size vs fidelity"),
                        ("widths", "Channel widths per layer")):
        if name in plots:
            parts += ["", f"## {title}", "", f"![{title}]({plots[name]})"]
    parts += _md_grid(report)
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
    errors = [(r["name"], e) for r in report["variants"] for e in r["errors"]]
    errors += [(s["path"], s["reason"]) for s in report.get("skipped", [])]
    if errors:
        parts += ["", "## Problems", ""] + [f"- `{n}`: {e}" for n, e in errors]
    return "\n".join(parts) + "\n"


def _md_grid(report: dict[str, Any]) -> list[str]:
    names = grid_variants(report)
    gain = report["images"].get("diff_gain", 8)
    parts = []
    for entry in report["images"]["grid"]:
        shown = [n for n in names if n in entry["outputs"]]
        if not shown:
            continue
        image = entry.get("image", Path(entry["content"]).name)
        parts += ["", f"### {image}", "", "| content | " + " | ".join(shown) + " |",
                  "|" + "---|" * (len(shown) + 1),
                  f"| ![content]({entry['content']}) | " + " | ".join(
                      f"![{n}]({entry['outputs'][n]})" for n in shown) + " |",
                  f"| \\|a−teacher\\|×{gain} | " + " | ".join(
                      f"![diff]({entry['diffs'][n]})" if n in entry.get("diffs", {}) else "" for n in shown) + " |",
                  "| | " + " | ".join(_caption(report, n, image).replace("|", "\\|") for n in shown) + " |"]
    return (["", "## Images (teacher, verdict, frontier; amplified difference vs the teacher)"] + parts) if parts else []


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def perceptual_bands(row: dict[str, Any]) -> float | None:
    """The ranking measure: the judge's perceptual distance from the teacher in band units (0 = identical)."""
    return (row["quality"].get("judge") or {}).get("perceptual_bands")


def grade_of(row: dict[str, Any]) -> str | None:
    return (row["quality"].get("judge") or {}).get("grade")


def _points(report: dict[str, Any], x: str) -> list[dict[str, Any]]:
    """Plot points of the runnable variants: x = latency p50 or size (MB), y = perceptual distance in bands."""
    pts = []
    for r in runnable(report):
        value = _latency(r).get("p50") if x == "latency" else (r.get("size_bytes") or 0) / 1e6 or None
        distance = perceptual_bands(r)
        if value is not None and distance is not None:
            pts.append({"name": r["name"], "x": value, "y": distance, "runtime": r["runtime"],
                        "pareto": r.get("pareto"), "verdict": r.get("verdict")})
    return pts


def grade_limits(report: dict[str, Any]) -> dict[str, float]:
    """The grade limits on the perceptual axis (band units): 1 band, and the teacher's 2-px shift (mean over
    judged styles)."""
    calibration = (report.get("judge") or {}).get("calibration") or []
    shifts = [shift_in_bands(c, "perceptual") for c in calibration if c["band"]["perceptual"] > 0]
    limits = {"indistinguishable: within the teacher's band": 1.0}
    if shifts:
        limits["close: within the teacher's 2-px shift"] = sum(shifts) / len(shifts)
    return limits


def fidelity_scatter(series: list[tuple[str | None, list[dict[str, Any]]]], limits: dict[str, float], xlabel: str,
                     title: str) -> bytes | None:
    """Perceptual distance from the teacher (band units, log, closer = up) against a cost on a log x axis; one
    marker per runtime, the frontier as steps, the grade limits dashed; identical points on a "≡ teacher" line."""
    pts = [p for _, ps in series for p in ps]
    if not pts:
        return None
    plt = _pyplot()
    positive = [p["y"] for p in pts if p["y"] > 0] + list(limits.values())
    low, high = min(positive) / 2, max(positive) * 1.6
    same_y = low / 1.6
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    labels = []
    for k, (run, ps) in enumerate(series):
        color = f"C{k}" if len(series) > 1 else None
        for p in ps:
            y = same_y if p["y"] <= 0 else p["y"]
            c = color or COLORS.get(p["runtime"], "C7")
            ax.scatter(p["x"], y, marker=MARKERS.get(p["runtime"], "o"), s=110 if p["pareto"] else 45, color=c,
                       alpha=1.0 if p["pareto"] else 0.45, edgecolors="black" if p["pareto"] else "none", zorder=3)
            if p["verdict"]:
                ax.scatter(p["x"], y, s=420, facecolors="none", edgecolors="crimson", linewidths=2, zorder=4)
            labels.append((p["x"], y, (f"{run}: " if run else "") + p["name"]))
        front = sorted((p["x"], same_y if p["y"] <= 0 else p["y"]) for p in ps if p["pareto"])
        if front:
            xs = [f[0] for f in front] + [max(p["x"] for p in pts) * 1.5]
            ys = [f[1] for f in front] + [front[-1][1]]
            ax.step(xs, ys, where="post", color=color or "black", alpha=0.6, lw=1.2,
                    label=f"{run}: Pareto frontier" if run else "Pareto frontier")
    for (label, value), style in zip(limits.items(), ("--", ":")):
        ax.axhline(value, color="crimson", ls=style, lw=1, label=f"{label} ({value:.2g})")
    ax.set_ylim(high, same_y / 1.3)  # inverted: closer to the teacher is up
    xs = [p["x"] for p in pts]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if low <= t <= high]
    ax.set_yticks(ticks + [same_y], [f"{t:g}" for t in ticks] + ["≡ teacher"])
    ax.minorticks_off()
    for rt in sorted({p["runtime"] for p in pts}):
        ax.scatter([], [], marker=MARKERS.get(rt, "o"), color="gray" if len(series) > 1 else COLORS.get(rt, "C7"),
                   label=rt)
    ax.scatter([], [], s=200, facecolors="none", edgecolors="crimson", linewidths=2, label="verdict")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perceptual distance from the teacher\n(teacher's same-picture bands, log; up = closer)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    place_labels(fig, ax, labels)
    return _png(fig)


def place_labels(fig, ax, labels: list[tuple[float, float, str]]) -> None:
    """Greedy label placement: each label takes the first offset around its point that overlaps no placed label
    and no marker and stays inside the axes; a thin leader line ties a far-placed label to its point."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _ in labels]
    taken: list[Any] = []
    offsets = [(dx * r, dy * r) for r in (1, 2, 3, 4.5) for dx, dy in
               ((8, 5), (8, -13), (-8, 5), (-8, -13), (0, 11), (0, -19), (14, -4), (-14, -4))]
    for x, y, text in labels:
        ann = ax.annotate(text, (x, y), xytext=offsets[0], textcoords="offset points", fontsize=7.5, zorder=5,
                          arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray", "shrinkA": 0, "shrinkB": 4})
        for dx, dy in offsets:
            ann.xyann = (dx, dy)
            ann.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer).expanded(1.04, 1.1)
            clash = any(box.overlaps(t) for t in taken) or any(
                box.x0 - 5 <= px <= box.x1 + 5 and box.y0 - 5 <= py <= box.y1 + 5 for px, py in markers)
            if not clash and frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1):
                break
        taken.append(box)


def frontier_plot(report: dict[str, Any]) -> bytes | None:
    return fidelity_scatter([(None, _points(report, "latency"))], grade_limits(report),
                            "latency p50 (ms, own runtime, log scale)",
                            f"latency vs fidelity to the teacher ({report['settings']['size']} px eval, "
                            f"{report['settings']['threads']} thread(s))")


def size_plot(report: dict[str, Any]) -> bytes | None:
    return fidelity_scatter([(None, _points(report, "size"))], grade_limits(report),
                            "size on disk (MB, log scale)", "size vs fidelity to the teacher")


def widths_plot(report: dict[str, Any]) -> bytes | None:
    """Per-layer channel widths of every torch variant that has a spec (the pruned ones differ)."""
    import numpy as np

    rows = [r for r in report["variants"] if r.get("widths") and r["kind"] == "torch"]
    if not rows:
        return None
    plt = _pyplot()
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


# ---------------------------------------------------------------- HTML


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _img(png: bytes, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{_b64(png)}">'


def texture_window(path: Path, side: int = CROP) -> tuple[int, int, int, int]:
    """The ``side`` square of the teacher's output with the most detail (sum of gradient magnitudes)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    h, w = a.shape
    side = min(side, h, w)
    energy = np.abs(np.diff(a, axis=0))[:, :-1] + np.abs(np.diff(a, axis=1))[:-1, :]
    best, where = -1.0, (0, 0)
    for top in range(0, h - side + 1, max(1, side // 4)):
        for left in range(0, w - side + 1, max(1, side // 4)):
            e = float(energy[top:top + side - 1, left:left + side - 1].sum())
            if e > best:
                best, where = e, (left, top)
    return where[0], where[1], where[0] + side, where[1] + side


def _crop_png(path: Path, box: tuple[int, int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").crop(box).save(buf, format="PNG")
    return buf.getvalue()


def html_grid(report: dict[str, Any], out_dir: Path) -> str:
    """Per held-out photo: content, teacher and the chosen variants, their amplified differences and 1:1 crops."""
    names = grid_variants(report)
    gain = report["images"].get("diff_gain", 8)
    blocks = []
    for entry in report["images"]["grid"]:
        shown = [n for n in names if n in entry["outputs"] and (out_dir / entry["outputs"][n]).is_file()]
        content = out_dir / entry["content"]
        if not shown or not content.is_file():
            continue
        image = entry.get("image", content.name)
        teacher_png = out_dir / entry["outputs"][shown[0]]
        box = texture_window(teacher_png, min(CROP, max(32, report["settings"]["size"] // 3)))

        def fig(png: bytes, caption: str, cls: str = "") -> str:
            return f"<figure>{_img(png, caption, cls)}<figcaption>{html.escape(caption)}</figcaption></figure>"

        outs = [fig(content.read_bytes(), "content")] + [
            fig((out_dir / entry["outputs"][n]).read_bytes(), _caption(report, n, image)) for n in shown]
        diffs = ['<figure class="blank"></figure>'] + [
            fig((out_dir / entry["diffs"][n]).read_bytes(), f"|{n} − teacher| × {gain}")
            if n in entry.get("diffs", {}) and (out_dir / entry["diffs"][n]).is_file() else
            '<figure class="blank"></figure>' for n in shown]
        crops = [fig(_crop_png(content, box), f"content, 1:1 crop {box[2] - box[0]} px", "crop")] + [
            fig(_crop_png(out_dir / entry["outputs"][n], box), f"{n}, 1:1 crop", "crop") for n in shown]
        cols = len(shown) + 1
        blocks.append(f'<section class="photo"><h3>{html.escape(image)}</h3>'
                      f'<div class="grid" style="grid-template-columns: repeat({cols}, minmax(0, 200px))">'
                      + "".join(outs + diffs + crops) + "</div></section>")
    if not blocks:
        return ""
    return ("<h2>Images</h2><p>Teacher, verdict and frontier variants on each held-out photo; below each, its "
            f"difference from the teacher amplified {gain}×; then the most detailed window of the teacher's output "
            "at full resolution (1:1 pixels, enlarged with square pixels).</p>" + "".join(blocks))


def _html_table(header: list[str], rows: list[list[str]], classes: list[str] | None = None,
                notes: list[str] | None = None, name_col: int = 1) -> str:
    """A table whose ``name_col`` holds names (left-aligned, wrapping; ``notes`` under them), the rest numbers."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, cells in enumerate(rows):
        cls = (classes or [""] * len(rows))[k]
        tds = "".join(f'<td class="{"name" if j == name_col else f"c{j}"}">{html.escape(c)}' + (
            f'<br><small>also {html.escape(notes[k])}</small>' if j == name_col and notes and notes[k] else "")
            + "</td>" for j, c in enumerate(cells))
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1240px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
ul.facts { padding-left: 1.2em; } ul.facts li { margin: 0.2em 0; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; } td { white-space: nowrap; } td.c0, td.name { text-align: left; }
td.name { white-space: normal; max-width: 280px; overflow-wrap: anywhere; }
tr.pareto { background: #fff4d6; } tr.verdict { background: #dff3df; font-weight: 600; }
small { color: #666; font-weight: normal; }
p.legend { font-size: 0.85em; color: #444; max-width: 1100px; }
img { max-width: 100%; }
.grid { display: grid; gap: 6px; align-items: start; }
figure { margin: 0; } figcaption { font-size: 0.72em; overflow-wrap: anywhere; }
.grid img { width: 100%; } img.crop { image-rendering: pixelated; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  section.photo, figure, table, img { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  tr.pareto, tr.verdict, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>\n{body}\n</body></html>\n')


def _md_inline(text: str) -> str:
    """The few Markdown marks the preamble uses (**bold**, `code`) as HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(report: dict[str, Any], out_dir: Path, plots: dict[str, bytes | None] | None = None) -> str:
    out_dir = Path(out_dir)
    plots = plots if plots is not None else {"frontier": frontier_plot(report), "size": size_plot(report),
                                             "widths": widths_plot(report)}
    rows = runnable(report)
    classes = ["verdict" if r.get("verdict") else "pareto" if r.get("pareto") else "" for r in rows]
    notes = [", ".join(_also(r)) for r in rows]
    parts = ["<h1>styleslim evaluation report</h1>",
             '<ul class="facts">' + "".join(f"<li>{_md_inline(line)}</li>" for line in _preamble(report)) + "</ul>",
             _html_table(table_header(report), table_rows(report), classes, notes),
             (f'<p class="legend">PSNR / SSIM: the variant\'s output vs the teacher\'s on the held-out photos '
              f"(higher = closer; ≡ teacher = identical). {html.escape(DELTA_LEGEND)} Rows: green = verdict, "
              f"yellow = frontier; “also” lists other paths with the same content, evaluated once. {FIXED_NOTE}</p>")]
    if not_runnable(report):
        parts += ["<h2>Core ML packages</h2>", f'<p class="legend">{html.escape(COREML_NOTE)}</p>',
                  _html_table(COREML_HEADER, coreml_rows(report))]
    header, prow = search_rows(report)
    if prow:
        parts += ["<h2>Student search</h2>", f'<p class="legend">{html.escape(search_note(report))}</p>',
                  _html_table(header, prow)]
    header, prow = per_style_rows(report)
    if prow:
        parts += ["<h2>Fidelity per style</h2>", _html_table(header, prow)]
    header, prow = per_image_rows(report)
    if prow:
        note = photo_shift_note(report)
        parts += ["<h2>Fidelity per held-out photo</h2>", _html_table(header, prow)]
        parts += [f'<p class="legend">{html.escape(note)}</p>'] if note else []
    for name, title in (("frontier", "Latency vs fidelity"), ("size", "Size vs fidelity"),
                        ("widths", "Channel widths per layer")):
        if plots.get(name):
            parts.append(f"<h2>{title}</h2>{_img(plots[name], title)}")
    parts.append(html_grid(report, out_dir))
    if report["exports"]:
        parts += ["<h2>Exported artifacts</h2>", _html_table(
            ["format", "precision", "path", "size", "parity runtime", "parity PSNR", "passed"],
            [[str(e["format"]), str(e.get("precision")), e["path"], _human_bytes(e["size_bytes"]),
              str(e["parity"]["runtime"]), _num(e["parity"]["psnr_db"], "{:.1f}"), str(e["parity"]["passed"])]
             for e in report["exports"]])]
    errors = [(r["name"], e) for r in report["variants"] for e in r["errors"]]
    errors += [(s["path"], s["reason"]) for s in report.get("skipped", [])]
    if errors:
        parts.append("<h2>Problems</h2><ul>" + "".join(
            f"<li><code>{html.escape(n)}</code>: {html.escape(e)}</li>" for n, e in errors) + "</ul>")
    return _page("styleslim report", "\n".join(parts))


# ---------------------------------------------------------------- compare


def compare_plot(report_a: dict[str, Any], report_b: dict[str, Any], label_a: str, label_b: str) -> bytes | None:
    """Both runs' latency-vs-fidelity points and frontiers on one plot (the first run's grade limits drawn)."""
    return fidelity_scatter([(label_a, _points(report_a, "latency")), (label_b, _points(report_b, "latency"))],
                            grade_limits(report_a), "latency p50 (ms, own runtime, log scale)", f"{label_a} vs {label_b}")


def _compare_rows(report_a, report_b, label_a, label_b) -> tuple[list[str], list[list[str]]]:
    by_a = {r["name"]: r for r in runnable(report_a)}
    by_b = {r["name"]: r for r in runnable(report_b)}
    names = list(by_a) + [n for n in by_b if n not in by_a]
    header = ["variant"] + [f"{c} {lab}" for c in ("grade", "perceptual", "PSNR dB", "p50 ms", "size", "style Δ%")
                            for lab in (label_a, label_b)]
    header.append(f"p50 {label_b}/{label_a}")
    rows = []
    for name in names:
        a, b = by_a.get(name), by_b.get(name)
        cells = [name]
        for get in (lambda r: grade_of(r) or "–",
                    lambda r: _num(perceptual_bands(r), "{:.2f}"),
                    lambda r: _psnr_text(fidelity_db(r)) if fidelity_db(r) is not None else "–",
                    lambda r: _num(_latency(r).get("p50"), "{:.1f}"),
                    lambda r: _human_bytes(r.get("size_bytes")),
                    lambda r: _num(r["quality"].get("style_degradation_pct"), "{:+.1f}")):
            cells += [get(a) if a else "–", get(b) if b else "–"]
        pa = _latency(a).get("p50") if a else None
        pb = _latency(b).get("p50") if b else None
        cells.append(f"{pb / pa:.2f}×" if pa and pb else "–")
        rows.append(cells)
    return header, rows


def _compare_facts(report_a, report_b, label_a, label_b) -> list[str]:
    lines = []
    for lab, rep in ((label_a, report_a), (label_b, report_b)):
        rk = rep["ranking"]
        lines.append(f"{lab}: verdict **{rk['verdict'] or 'none graded ' + rk.get('grade', 'close')}**; "
                     f"{machine_line(rep)}" + (f"; run: {cost}" if (cost := run_cost(rep)) else ""))
    lines.append("Ranked by the judge's perceptual distance from each run's own teacher, in that teacher's "
                 f"same-picture bands. {DELTA_LEGEND}")
    if not_runnable(report_a) or not_runnable(report_b):
        lines.append("Core ML packages are not compared: their predictions need macOS (see each run's report).")
    if report_a["loss_network"]["weights"] != report_b["loss_network"]["weights"]:
        lines.append("**warning**: the two runs were judged by different loss networks; loss deltas are not comparable")
    if report_a["machine"]["cpu_model"] != report_b["machine"]["cpu_model"]:
        lines.append("**warning**: measured on different CPUs; latency ratios across runs are not fair")
    return lines


def compare(report_a: dict[str, Any], report_b: dict[str, Any], label_a: str = "A", label_b: str = "B",
            plot_link: str | None = None) -> str:
    """Markdown: the variants of two runs side by side (matched by name), with B/A latency ratios."""
    header, rows = _compare_rows(report_a, report_b, label_a, label_b)
    lines = [f"# {label_a} vs {label_b}", ""] + [f"- {line}" for line in _compare_facts(report_a, report_b, label_a,
                                                                                         label_b)]
    if plot_link:
        lines += ["", f"![both frontiers]({plot_link})"]
    return "\n".join(lines + ["", md_table(header, rows)]) + "\n"


def compare_html(report_a: dict[str, Any], report_b: dict[str, Any], label_a: str = "A", label_b: str = "B",
                 plot: bytes | None = None) -> str:
    """The same comparison as a self-contained page, both frontiers drawn on one plot."""
    header, rows = _compare_rows(report_a, report_b, label_a, label_b)
    plot = plot if plot is not None else compare_plot(report_a, report_b, label_a, label_b)
    parts = [f"<h1>{html.escape(label_a)} vs {html.escape(label_b)}</h1>",
             '<ul class="facts">' + "".join(f"<li>{_md_inline(line)}</li>"
                                            for line in _compare_facts(report_a, report_b, label_a, label_b)) + "</ul>",
             _img(plot, "both frontiers") if plot else "", _html_table(header, rows, name_col=0)]
    return _page(f"{label_a} vs {label_b}", "\n".join(parts))


def write_compare(report_a: dict[str, Any], report_b: dict[str, Any], label_a: str, label_b: str,
                  output: Path) -> list[Path]:
    """``output`` (.md), the same stem .html, and the plot the Markdown links (stem.frontier.png)."""
    output = Path(output)
    plot = compare_plot(report_a, report_b, label_a, label_b)
    written = []
    link = None
    if plot:
        png = output.with_name(output.stem + ".frontier.png")
        atomic_write(png, lambda p: p.write_bytes(plot))
        link, written = png.name, [png]
    write_text(output, compare(report_a, report_b, label_a, label_b, link))
    write_text(output.with_suffix(".html"), compare_html(report_a, report_b, label_a, label_b, plot))
    return [output, output.with_suffix(".html"), *written]
