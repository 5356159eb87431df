"""The student search (recipe stage ``search``) and peers measured beside a run's variants (``evaluate.peers``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compressor.config import Recipe
from compressor.models import load_model
from evaluation.search import mark_frontier, pick
from styleslim.pipeline import run_recipe

CHEAP = {"unshuffle": 4, "stem": 8, "trunk": 8, "blocks": 0}
COSTLY = {"unshuffle": 1, "stem": 48, "trunk": 48, "blocks": 3}


class _PeerNet(nn.Module):
    """A stand-in for a shipped multi-style graph: an image and a style-weights input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(4, 3))

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(image) + (style_weights @ self.shift).reshape(1, 3, 1, 1))


def _recipe(tmp_path, grade: str = "close") -> Recipe:
    peer = tmp_path / "peer.onnx"
    torch.onnx.export(_PeerNet().eval(), (torch.rand(1, 3, 32, 32), torch.ones(4) / 4), str(peer), dynamo=False,
                      input_names=["image", "style_weights"], output_names=["out"],
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "h", 3: "w"}})
    return Recipe.model_validate({
        "name": "search", "loss_network": "random", "style_size": 32,
        "model": {"family": "transformer_net", "spec": {"conv1": 8, "conv2": 8, "trunk": 8, "res_inner": [8] * 5,
                                                         "deconv1": 8, "deconv2": 8}},
        "search": {"candidates": [{"family": "edge_net", "spec": COSTLY}, {"family": "edge_net", "spec": CHEAP}],
                   "steps": 3, "size": 32, "latency_runs": 3, "grade": grade},
        "distill": {"steps": 2, "batch_size": 2, "crop": 32, "paired_size": 64, "perceptual_weight": 0.0,
                    "checkpoint_every": 10},
        "export": {"formats": ["onnx"], "size": 32},
        "evaluate": {"size": 32, "latency_sizes": [32], "latency_runs": 3, "memory": False,
                     "peers": [{"path": str(peer), "inputs": {"style_weights": 1}}]},
    })


def test_search_judges_each_candidate_trains_the_winner_on_and_reports_it(tmp_path):
    run_dir = run_recipe(_recipe(tmp_path), tmp_path / "runs", progress=False)
    search = json.loads((run_dir / "search" / "search.json").read_text())
    rows = search["candidates"]
    assert [r["spec"]["stem"] for r in rows] == [COSTLY["stem"], CHEAP["stem"]]
    assert rows[0]["macs"] > 20 * rows[1]["macs"]
    assert search["grade"] == "close" and search["calibration"]["band"]["perceptual"] > 0
    for r in rows:  # two- and three-step students: not the teacher's picture, and the judge says so
        assert r["judge"]["perceptual_bands"] > 1 and r["judge"]["grade"] != "indistinguishable"
        assert r["judge"]["perceptual_bands"] == pytest.approx(
            r["judge"]["perceptual"] / search["calibration"]["band"]["perceptual"])
    winner, within = pick(rows, search["grade"])
    assert search["winner"] == winner["candidate"] and search["winner_within_budget"] == within
    assert any(r["pareto"] for r in rows)

    distilled = load_model(run_dir / "distilled")
    assert distilled.current_spec() == load_model(run_dir / "search" / "winner").current_spec()
    meta = json.loads((run_dir / "distilled" / "spec.json").read_text())["meta"]
    assert meta["student_from"].startswith("search winner")

    report = json.loads((run_dir / "report.json").read_text())
    assert report["search"]["winner"] == search["winner"]
    took = report["run"]["stage_seconds"]  # what each stage before the evaluation cost, in the report
    assert list(took) == ["model", "search", "distill", "export"] and took["search"] > took["model"]
    assert f"search {took['search']:.0f} s" in (run_dir / "report.md").read_text()
    peers = [v for v in report["variants"] if v["kind"] == "peer"]
    assert len(peers) == 1 and peers[0]["latency_ms"]["onnxruntime"]["p50"] > 0
    assert peers[0]["quality"]["psnr_vs_teacher"] is not None
    assert not peers[0]["verdict"] and not peers[0]["pareto"]
    assert peers[0]["name"] not in report["ranking"]["frontier"]
    md = (run_dir / "report.md").read_text()
    assert "## Student search" in md and "× peer" in md and "Peer: `peer peer.onnx [style_weights=1]`" in md
    assert "Fastest artifact: `" in md


def _row(candidate: int, bands: float, grade: str, ms: float, psnr: float = 20.0) -> dict:
    return {"candidate": candidate, "judge": {"perceptual_bands": bands, "grade": grade}, "psnr_vs_teacher": psnr,
            "latency_ms": {"p50": ms}}


def test_the_fastest_candidate_within_the_grade_wins_else_the_nearest():
    rows = [_row(0, 9.0, "different", 2.0), _row(1, 2.5, "close", 9.0, psnr=16.0), _row(2, 0.8, "indistinguishable",
            12.0), _row(3, 12.0, "different", 5.0)]
    assert pick(rows, "close") == (rows[1], True)
    assert pick(rows, "indistinguishable") == (rows[2], True)
    assert pick(rows, "close", min_psnr_db=18.0) == (rows[2], True)  # the dB budget holds as well
    assert pick(rows[:1] + rows[3:], "close") == (rows[0], False)  # none qualifies: the nearest, not the fastest
    mark_frontier(rows)
    assert [r["pareto"] for r in rows] == [True, True, True, False]  # 3 is slower and farther than 0


@pytest.mark.parametrize(("change", "message"), [
    ({"distill": None}, "add a distill section"),
    ({"distill": {"student": {"family": "edge_net"}}}, "the search picks the student"),
])
def test_a_search_needs_a_distill_stage_and_owns_the_student(change, message):
    data = {"name": "x", "search": {"candidates": [{"family": "edge_net"}]}, "distill": {}} | change
    with pytest.raises(ValueError, match=message):
        Recipe.model_validate(data)


def test_a_peer_that_cannot_run_is_one_clear_error(tmp_path):
    from compressor.config import Peer
    from compressor.errors import UserError
    from evaluation.variants import peer_variant

    recipe = _recipe(tmp_path)
    peer = recipe.evaluate.peers[0]
    assert peer_variant(peer).is_peer
    with pytest.raises(UserError, match="evaluate.peers: .*needs a fixed value"):
        peer_variant(Peer(path=peer.path))
    with pytest.raises(UserError, match="evaluate.peers: .*no such ONNX file"):
        peer_variant(Peer(path=str(tmp_path / "missing.onnx")))


def test_the_search_reruns_when_what_it_reads_changes_and_only_then(tmp_path):
    from compressor.config import QuantizeStage
    from styleslim.pipeline import _stage_hash

    recipe = _recipe(tmp_path)
    same = _stage_hash(recipe, "search", "up")
    assert _stage_hash(recipe.model_copy(update={"evaluate": None}), "search", "up") == same
    crop = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"crop": 48})})
    assert _stage_hash(crop, "search", "up") != same

    def quantized(**fields):
        return recipe.model_copy(update={"quantize": QuantizeStage(**fields)})

    plain = _stage_hash(quantized(), "search", "up")
    assert _stage_hash(quantized(keep_float=["stem.0"], grade="close", modes=["dynamic"]), "search", "up") == plain
    assert _stage_hash(quantized(calibration=str(tmp_path)), "search", "up") != plain


def test_a_bad_candidate_spec_names_its_key_and_field():
    from compressor.config import StudentChoice
    from compressor.distill import named_student
    from compressor.errors import UserError

    with pytest.raises(UserError, match=r"search.candidates.2: spec.blocks: Input should be less than or equal to 16"):
        named_student(StudentChoice(family="edge_net", spec={"blocks": 99}), 0, "search.candidates.2", None)


def test_a_search_refuses_a_teacher_of_several_styles_before_training(tmp_path):
    from types import SimpleNamespace

    from compressor.errors import UserError
    from compressor.models import create_model
    from evaluation.search import search_students

    teacher = create_model({"family": "multistyle", "n_styles": 3, "contract": [8, 8, 8], "res_inner": [8],
                            "expand": [8, 4]})
    recipe = _recipe(tmp_path)
    with pytest.raises(UserError, match="search: .*this teacher holds 3.*distill.student"):
        search_students(recipe.search, recipe.distill, SimpleNamespace(teacher=teacher), None, tmp_path / "s",
                        "samples", {}, tmp_path)
    assert not (tmp_path / "s").exists()
