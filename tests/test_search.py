"""The student search (recipe stage ``search``) and peers measured beside a run's variants (``evaluate.peers``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compressor.config import Recipe
from compressor.models import load_model
from compressor.pipeline import run_recipe
from evaluation.search import mark_frontier, pick

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


def _recipe(tmp_path, min_psnr_db: float) -> Recipe:
    peer = tmp_path / "peer.onnx"
    torch.onnx.export(_PeerNet().eval(), (torch.rand(1, 3, 32, 32), torch.ones(4) / 4), str(peer), dynamo=False,
                      input_names=["image", "style_weights"], output_names=["out"],
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "h", 3: "w"}})
    return Recipe.model_validate({
        "name": "search", "loss_network": "random", "style_size": 32,
        "model": {"family": "transformer_net", "spec": {"conv1": 8, "conv2": 8, "trunk": 8, "res_inner": [8] * 5,
                                                         "deconv1": 8, "deconv2": 8}},
        "search": {"candidates": [{"family": "edge_net", "spec": COSTLY}, {"family": "edge_net", "spec": CHEAP}],
                   "steps": 3, "size": 32, "latency_runs": 3, "min_psnr_db": min_psnr_db},
        "distill": {"steps": 2, "batch_size": 2, "crop": 32, "paired_size": 64, "perceptual_weight": 0.0,
                    "checkpoint_every": 10},
        "export": {"formats": ["onnx"], "size": 32},
        "evaluate": {"size": 32, "latency_sizes": [32], "latency_runs": 3, "memory": False,
                     "peers": [{"path": str(peer), "inputs": {"style_weights": 1}}]},
    })


def test_search_picks_the_fastest_within_budget_trains_it_on_and_reports_it(tmp_path):
    run_dir = run_recipe(_recipe(tmp_path, min_psnr_db=1.0), tmp_path / "runs", progress=False)
    search = json.loads((run_dir / "search" / "search.json").read_text())
    rows = search["candidates"]
    assert [r["spec"]["stem"] for r in rows] == [COSTLY["stem"], CHEAP["stem"]]
    assert rows[0]["macs"] > 20 * rows[1]["macs"]
    fastest = min(rows, key=lambda r: r["latency_ms"]["p50"])
    assert search["winner"] == fastest["candidate"] and search["winner_within_budget"]
    assert all(r["psnr_vs_teacher"] > 1.0 for r in rows) and any(r["pareto"] for r in rows)

    distilled = load_model(run_dir / "distilled")
    assert distilled.current_spec() == load_model(run_dir / "search" / "winner").current_spec()
    meta = json.loads((run_dir / "distilled" / "spec.json").read_text())["meta"]
    assert meta["student_from"].startswith("search winner")

    report = json.loads((run_dir / "report.json").read_text())
    assert report["search"]["winner"] == search["winner"]
    peers = [v for v in report["variants"] if v["kind"] == "peer"]
    assert len(peers) == 1 and peers[0]["latency_ms"]["onnxruntime"]["p50"] > 0
    assert peers[0]["quality"]["psnr_vs_teacher"] is not None
    assert not peers[0]["verdict"] and not peers[0]["pareto"]
    assert peers[0]["name"] not in report["ranking"]["frontier"]
    md = (run_dir / "report.md").read_text()
    assert "## Student search" in md and "× peer" in md and "Peer: `peer peer.onnx [style_weights=1]`" in md
    assert "Fastest artifact: `" in md


def test_with_none_within_budget_the_most_faithful_wins():
    rows = [{"candidate": 0, "psnr_vs_teacher": 14.0, "latency_ms": {"p50": 2.0}},
            {"candidate": 1, "psnr_vs_teacher": 19.0, "latency_ms": {"p50": 9.0}},
            {"candidate": 2, "psnr_vs_teacher": 12.0, "latency_ms": {"p50": 5.0}}]
    winner, within = pick(rows, 30.0)
    assert winner["candidate"] == 1 and not within
    winner, within = pick(rows, 13.0)
    assert winner["candidate"] == 0 and within
    mark_frontier(rows)
    assert [r["pareto"] for r in rows] == [True, True, False]  # 2 is slower and worse than 0


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

    recipe = _recipe(tmp_path, 1.0)
    peer = recipe.evaluate.peers[0]
    assert peer_variant(peer).is_peer
    with pytest.raises(UserError, match="evaluate.peers: .*needs a fixed value"):
        peer_variant(Peer(path=peer.path))
    with pytest.raises(UserError, match="evaluate.peers: .*no such ONNX file"):
        peer_variant(Peer(path=str(tmp_path / "missing.onnx")))


def test_the_search_reruns_when_the_distill_settings_it_trains_with_change(tmp_path):
    from compressor.pipeline import _stage_hash

    recipe = _recipe(tmp_path, 1.0)
    same = _stage_hash(recipe, "search", "up")
    assert _stage_hash(recipe.model_copy(update={"evaluate": None}), "search", "up") == same
    crop = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"crop": 48})})
    assert _stage_hash(crop, "search", "up") != same


def test_a_bad_candidate_spec_names_its_key_and_field():
    from compressor.config import StudentChoice
    from compressor.distill import named_student
    from compressor.errors import UserError

    with pytest.raises(UserError, match=r"search.candidates.2: spec.blocks: Input should be less than or equal to 16"):
        named_student(StudentChoice(family="edge_net", spec={"blocks": 99}), 0, "search.candidates.2", None)
