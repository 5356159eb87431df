"""Ranking by fidelity, readable plots, shared float artifacts: the parts of the report that need no evaluation run."""

from __future__ import annotations

import shutil

import matplotlib
import pytest
import torch

from compressor.models import TransformerNet, TransformerNetSpec, save_model
from evaluation.evaluate import rank
from evaluation.latency import machine_info
from evaluation.report import _y_range, fidelity_scatter, machine_line, place_labels
from evaluation.variants import content_hash
from exports.manifest import manifest_path

matplotlib.use("Agg")

TINY = TransformerNetSpec(conv1=4, conv2=8, trunk=8, res_inner=[8] * 5, deconv1=8, deconv2=4)


def row(name: str, p50: float, psnr: float | None, style_delta: float, identical: bool = False) -> dict:
    return {"name": name, "runtime": "torch", "latency_ms": {"torch": {"p50": p50}}, "pareto": False,
            "verdict": False, "quality": {"identical_to_teacher": identical, "psnr_vs_teacher": psnr,
                                          "style_degradation_pct": style_delta,
                                          "degradation_pct": style_delta}}


def test_a_student_that_merely_differs_never_ranks_above_its_teacher():
    """Issue 12's case: the student's losses are *lower* than the teacher's (negative signed deltas), yet it
    is only 18 dB away from the teacher's pictures. Ranked by signed degradation it would beat a slower but
    faithful int8 twin; ranked by fidelity it cannot."""
    rows = [
        row("teacher", 100.0, None, 0.0, identical=True),
        row("int8", 60.0, 41.0, +0.4),              # faithful, slower than the student
        row("distilled", 40.0, 18.2, -22.7),        # fast, "better" losses, a different picture
        row("slow-different", 120.0, 17.0, -30.0),  # slower than the teacher and different: dominated
    ]
    ranking = rank(rows, min_psnr_db=30.0)
    by = {r["name"]: r for r in rows}
    assert ranking["measure"] == "psnr_vs_teacher"
    assert ranking["verdict"] == "int8"  # the fastest within budget, not the faster student far outside it
    assert ranking["within_budget"] == ["int8", "teacher"]
    assert by["teacher"]["pareto"] and not by["slow-different"]["pareto"]
    # The student is on the frontier only as the cheap end: nothing places it above the teacher's fidelity.
    assert ranking["frontier"] == ["distilled", "int8", "teacher"]
    assert not by["distilled"]["verdict"]
    # With the budget lowered to its level it may win, because it is fastest: the measure, not the sign, decides.
    assert rank([dict(r) for r in rows], min_psnr_db=18.0)["verdict"] == "distilled"


def test_no_variant_within_budget_gives_no_verdict():
    rows = [row("a", 10.0, 20.0, -5.0), row("b", 20.0, 25.0, -1.0)]
    ranking = rank(rows, min_psnr_db=30.0)
    assert ranking["verdict"] is None and ranking["within_budget"] == []
    assert not any(r["verdict"] for r in rows)


def test_labels_do_not_overlap_and_outliers_are_clipped():
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xscale("log")
    points = [(10.0 + k * 0.4, 35.0 + (k % 3) * 0.3, f"quantized/onnx/model-int8-{k}.onnx") for k in range(6)]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_xlim(5, 30)
    ax.set_ylim(25, 40)
    fig.canvas.draw()
    place_labels(fig, ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert len(boxes) == len(points)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)
    floor, top, identical = _y_range([12.0, 31.0, 35.0], budget=30.0)
    assert 12.0 < floor <= 29.0 and identical > 35.0 and top > identical  # 12 dB is clipped, not stretching the axis
    png = fidelity_scatter([(None, [{"name": n, "x": x, "y": y, "runtime": "onnxruntime", "pareto": True,
                                     "verdict": False} for x, y, n in points + [(50.0, 12.0, "outlier")]])],
                           30.0, "latency", "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_stage_copies_the_quantize_stage_float_artifact(tmp_path):
    """The same float model exported by both stages is built once: the copy is byte-identical (one variant)."""
    from exports.stage import export_artifact, reuse_artifact

    torch.manual_seed(0)
    model_dir = save_model(TransformerNet(TINY), tmp_path / "teacher")
    float_dir = tmp_path / "quantized" / "onnx" / "float"
    built, _ = export_artifact(model_dir, "onnx", float_dir, size=(32, 32))
    copy = reuse_artifact(built, model_dir, tmp_path / "exports", (32, 32), "quantized/onnx/float/model-fp32.onnx")
    assert copy is not None
    path, manifest = copy
    assert path == tmp_path / "exports" / "model-fp32.onnx" and manifest_path(path).is_file()
    assert content_hash(path) == content_hash(built) and manifest["copied_from"].startswith("quantized/")
    # Another size, or other weights, is another export: not reused.
    assert reuse_artifact(built, model_dir, tmp_path / "other", (64, 64), "x") is None
    retrained = save_model(TransformerNet(TINY), tmp_path / "retrained")
    assert reuse_artifact(built, retrained, tmp_path / "other", (32, 32), "x") is None
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
    shutil.rmtree(tmp_path / "exports")


@pytest.mark.parametrize("same", [True, False])
def test_content_hash_tells_model_folders_apart(tmp_path, same):
    torch.manual_seed(0)
    a = save_model(TransformerNet(TINY), tmp_path / "a")
    if same:
        shutil.copytree(a, tmp_path / "b")
    else:
        torch.manual_seed(1)
        save_model(TransformerNet(TINY), tmp_path / "b")
    assert (content_hash(a) == content_hash(tmp_path / "b")) is same


@pytest.mark.parametrize("vnni, says", [(False, "no VNNI"), (True, "int8 dot products (VNNI)"), (None, None)])
def test_machine_line_says_whether_int8_has_dot_products(vnni, says):
    """Without VNNI an x86 host runs int8 several times slower than with it: a reader comparing runs must see it."""
    machine = {**machine_info(), "x86_vnni": vnni}
    line = machine_line({"machine": machine, "settings": {"threads": 2}})
    assert (says in line) if says else ("VNNI" not in line), line
