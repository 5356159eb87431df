"""Ranking by fidelity, readable plots, shared float artifacts: the parts of the report that need no evaluation run."""

from __future__ import annotations

import shutil

import matplotlib
import pytest
import torch

from compressor.models import TransformerNet, TransformerNetSpec, save_model
from evaluation.evaluate import rank
from evaluation.latency import machine_info
from evaluation.report import fidelity_scatter, fidelity_text, machine_line, photo_caveat, place_labels
from evaluation.variants import content_hash
from exports.manifest import manifest_path

matplotlib.use("Agg")

TINY = TransformerNetSpec(conv1=4, conv2=8, trunk=8, res_inner=[8] * 5, deconv1=8, deconv2=4)


def row(name: str, p50: float, psnr: float | None, style_delta: float, bands: float, grade: str,
        identical: bool = False, runtime: str = "torch", teacher: bool = False) -> dict:
    return {"name": name, "runtime": runtime, "latency_ms": {runtime: {"p50": p50}}, "pareto": False,
            "verdict": False, "teacher_weights": teacher,
            "quality": {"identical_to_teacher": identical, "psnr_vs_teacher": psnr,
                        "style_degradation_pct": style_delta, "degradation_pct": style_delta,
                        "judge": {"perceptual": bands * 0.02, "style": bands * 0.02, "perceptual_bands": bands,
                                  "style_bands": bands, "grade": grade}}}


def test_a_student_that_merely_differs_never_ranks_above_its_teacher():
    """Issue 12's case: the student's losses are *lower* than the teacher's (negative signed deltas), yet the
    judge grades its pictures different. Ranked by signed degradation it would beat a slower but faithful int8
    twin; ranked by the judge it cannot."""
    rows = [
        row("teacher", 100.0, None, 0.0, 0.0, "indistinguishable", identical=True, teacher=True),
        row("int8", 60.0, 24.0, +0.4, 2.1, "close"),                   # the same picture, slower than the student
        row("distilled", 40.0, 18.2, -22.7, 9.0, "different"),         # fast, "better" losses, a different picture
        row("slow-different", 120.0, 17.0, -30.0, 12.0, "different"),  # slower than the teacher and different
    ]
    ranking = rank(rows)
    by = {r["name"]: r for r in rows}
    assert ranking["measure"] == "perceptual_bands"
    assert ranking["verdict"] == "int8"  # the fastest graded close, not the faster student that paints otherwise
    assert ranking["within_budget"] == ["int8", "teacher"]
    assert by["teacher"]["pareto"] and not by["slow-different"]["pareto"]
    # The student is on the frontier only as the cheap end: nothing places it above the teacher's fidelity.
    assert ranking["frontier"] == ["distilled", "int8", "teacher"]
    assert not by["distilled"]["verdict"]
    # Asking for indistinguishable leaves only the teacher; a dB budget on top can rule out a close variant.
    assert rank([dict(r) for r in rows], "indistinguishable")["verdict"] == "teacher"
    assert rank([dict(r) for r in rows], "close", min_psnr_db=30.0)["verdict"] == "teacher"


def test_as_fast_within_the_timing_noise_the_nearest_to_the_teacher_wins():
    """A p50 1 % lower is no speed-up: the int8 file that paints farther from the teacher does not beat the
    indistinguishable fp32 one it ties with; a clearly faster one does."""
    rows = [row("teacher", 100.0, None, 0.0, 0.0, "indistinguishable", identical=True, teacher=True),
            row("fp32", 9.3, 27.0, 0.0, 0.35, "indistinguishable"),
            row("int8", 9.2, 19.0, 0.0, 1.7, "close")]
    assert rank([dict(r) for r in rows])["verdict"] == "fp32"
    rows[2]["latency_ms"]["torch"]["p50"] = 7.0
    ranking = rank(rows)
    assert ranking["verdict"] == "int8" and "nearest to the teacher" in ranking["measure_description"]


def test_no_variant_graded_close_gives_no_verdict_and_names_the_closest():
    rows = [row("a", 10.0, 20.0, -5.0, 9.0, "different"), row("b", 20.0, 25.0, -1.0, 6.0, "different")]
    ranking = rank(rows)
    assert ranking["verdict"] is None and ranking["within_budget"] == [] and ranking["closest"] == "b"
    assert not any(r["verdict"] for r in rows)


def test_what_to_ship_per_runtime_is_timed_against_the_teacher_on_that_runtime():
    rows = [
        row("teacher", 100.0, None, 0.0, 0.0, "indistinguishable", identical=True, teacher=True),
        row("teacher.onnx", 50.0, 60.0, 0.0, 0.1, "indistinguishable", runtime="onnxruntime", teacher=True),
        row("student-int8.onnx", 10.0, 24.0, 0.0, 2.0, "close", runtime="onnxruntime"),
        row("student.onnx", 20.0, 30.0, 0.0, 0.8, "indistinguishable", runtime="onnxruntime"),
        row("student.tflite", 30.0, 30.0, 0.0, 0.8, "indistinguishable", runtime="litert"),
    ]
    per = {e["runtime"]: e for e in rank(rows)["per_runtime"]}
    ort = per["onnxruntime"]
    assert ort["teacher"] == "teacher.onnx"
    assert ort["indistinguishable"] == {"name": "student.onnx", "speedup_vs_teacher": 2.5}
    assert ort["close"] == {"name": "student-int8.onnx", "speedup_vs_teacher": 5.0}
    assert per["litert"]["teacher"] is None and per["litert"]["close"]["speedup_vs_teacher"] is None


def test_a_photo_graded_worse_in_its_own_band_is_named_beside_the_pooled_grade():
    """Pooled, one photo's wide band can cover another's error: the fp32 student of the quickstart is
    indistinguishable on the mean of two photos but close on astronaut.png in that photo's own band."""
    student = row("student", 10.0, 27.0, 0.0, 0.4, "indistinguishable")
    student["quality"]["per_image"] = [{"image": "astronaut.png", "judge": {"grade": "close"}},
                                       {"image": "rocket.jpg", "judge": {"grade": "indistinguishable"}}]
    assert photo_caveat(student) == "; close on astronaut.png in its own band"
    assert photo_caveat(student, "close") == ""  # within what a close pick promises
    student["quality"]["per_image"][1]["judge"]["grade"] = "different"
    assert photo_caveat(student, "close") == "; different on rocket.jpg in its own band"
    assert "close on astronaut.png, different on rocket.jpg in its own band" in fidelity_text(student)
    pictures = [{"image": "astronaut.png", "style": str(s), "judge": {"grade": "close"}} for s in range(5)]
    student["quality"]["per_image"] = pictures  # a multi-style teacher: counted, not listed
    assert photo_caveat(student) == "; 5 of 5 pictures worse in their own band, close the worst"
    student["quality"]["per_image"] = pictures[:1]
    assert photo_caveat(student) == "; close on astronaut.png · style 0 in its own band"


def test_labels_do_not_overlap_and_identical_points_sit_on_the_teacher_line():
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
    png = fidelity_scatter([(None, [{"name": n, "x": x, "y": y, "runtime": "onnxruntime", "pareto": True,
                                     "verdict": False} for x, y, n in [(50.0, 0.0, "teacher"), (10.0, 0.8, "a"),
                                                                       (5.0, 40.0, "far")]])],
                           {"band": 1.0, "shift": 3.5}, "latency", "t")
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
