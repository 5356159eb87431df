"""Edge students (compressor.models.edge_net) and black-box ONNX teachers (compressor.blackbox)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.blackbox import OnnxTeacher
from compressor.config import DistillStage, TrainConfig
from compressor.data import ContentCrops, sample_content_paths
from compressor.distill import make_objective, train
from compressor.losses import psnr
from compressor.models import EdgeNet, EdgeNetSpec, create_model, get_family, load_model
from compressor.models.edge_net import unshuffled_kernel


class _MixTeacher(nn.Module):
    """A tiny 'style model' with a style-weights input, like multistyle26.onnx: the style picks a colour shift."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 5, padding=2)
        self.out = nn.Conv2d(8, 3, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(4, 3))

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        bias = (style_weights @ self.shift).reshape(1, 3, 1, 1)
        return torch.sigmoid(2 * self.out(torch.relu(self.conv(image))) + bias)


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory) -> tuple[str, _MixTeacher]:
    model = _MixTeacher().eval()
    path = tmp_path_factory.mktemp("teacher") / "teacher.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 32, 32), torch.ones(4) / 4), str(path), dynamo=False,
                      input_names=["image", "style_weights"], output_names=["out"],
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "h", 3: "w"}})
    return str(path), model


def test_onnx_teacher_runs_the_graph_with_its_fixed_inputs(onnx_teacher):
    path, model = onnx_teacher
    x = torch.rand(2, 3, 24, 40)
    for style in (0, 3):
        one_hot = torch.zeros(4)
        one_hot[style] = 1
        with torch.no_grad():
            expected = model(x, one_hot)
        got = OnnxTeacher(path, {"style_weights": style})(x)
        assert torch.allclose(got, expected, atol=1e-5)
    blend = OnnxTeacher(path, {"style_weights": [0.5, 0.5, 0, 0]})(x)
    assert not torch.allclose(blend, OnnxTeacher(path, {"style_weights": 0})(x), atol=1e-3)


def test_onnx_teacher_refuses_what_it_cannot_run(onnx_teacher, tmp_path):
    path, _ = onnx_teacher
    with pytest.raises(ValueError, match="style_weights.*needs a fixed value"):
        OnnxTeacher(path)
    with pytest.raises(ValueError, match="outside 0..3"):
        OnnxTeacher(path, {"style_weights": 4})
    with pytest.raises(ValueError, match="3 numbers given, the graph takes 4"):
        OnnxTeacher(path, {"style_weights": [1, 0, 0]})
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        OnnxTeacher(broken)


@pytest.mark.parametrize("spec", [
    {}, {"unshuffle": 2, "down": 1, "trunk": 16, "blocks": 1}, {"unshuffle": 1, "block": "dw", "stem": 8, "trunk": 8},
    {"norm": "instance", "down": 2, "trunk": 16, "blocks": 1}, {"block": "norm", "head": 24, "blocks": 1},
    {"down": 1, "up_norm": True, "trunk": 16, "blocks": 1}, {"unshuffle": 2, "tail": 4, "tail_kernel": 5, "blocks": 1},
    {"down": 1, "front": 2, "norm": "instance", "trunk": 16, "blocks": 1}, {"front": 1, "blocks": 1},
])
def test_edge_net_keeps_the_image_size_and_reloads(spec, tmp_path):
    from compressor.models import save_model

    model = create_model({"family": "edge_net", **spec}).eval()
    x = torch.rand(1, 3, 48, 64)
    y = model(x)
    assert y.shape == x.shape and float(y.min()) > 0 and float(y.max()) < 1
    save_model(model, tmp_path)
    assert torch.equal(load_model(tmp_path)(x), y)


@pytest.mark.parametrize("extra", [{}, {"tail": 4}, {"front": 2}])
def test_a_stride_2_edge_net_prunes_its_trunk_and_keeps_what_the_pixel_shuffle_needs(extra, tmp_path):
    from compressor.models import save_model
    from styleslim import prune

    model = create_model({"family": "edge_net", "unshuffle": 2, "down": 1, "stem": 16, "trunk": 16, "blocks": 2,
                          "up_norm": True, **extra}).eval()
    pruned = prune(model, ratio=0.5)  # torch-pruning alone indexed past the up conv's end
    assert (pruned.current_spec().stem, pruned.current_spec().trunk) == (16, 8)
    assert [layer.body[0].out_channels for layer in pruned.front] == [16] * len(pruned.front)  # each adds to the stem
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(load_model(save_model(pruned, tmp_path))(x), pruned(x))
    with pytest.raises(ValueError, match="down: 2 cannot be pruned"):
        prune(create_model({"family": "edge_net", "down": 2, "trunk": 16, "blocks": 1}), ratio=0.5)


@pytest.mark.parametrize("block", ["conv", "dw", "norm"])
def test_a_block_pruned_apart_from_the_rest_reloads(block, tmp_path):
    from compressor.models import save_model
    from styleslim import prune

    model = create_model({"family": "edge_net", "unshuffle": 2, "stem": 16, "blocks": 2, "block": block}).eval()
    pruned = prune(model, ratio=0.25, overrides={"blocks.0.body.0.0": 0.5})
    inner = pruned.current_spec().inner
    assert inner is not None and inner[0] < inner[1]  # spec.json records the widths the pruner left
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(load_model(save_model(pruned, tmp_path))(x), pruned(x))
    assert prune(model, ratio=0.25).current_spec().inner is None  # uniform widths stay implied by the trunk


def test_edge_student_learns_an_onnx_teacher(onnx_teacher, tmp_path):
    path, _ = onnx_teacher
    teacher = OnnxTeacher(path, {"style_weights": 2})
    torch.manual_seed(0)
    student = EdgeNet(EdgeNetSpec(unshuffle=2, stem=16, trunk=16, blocks=1))
    config = TrainConfig(steps=60, batch_size=4, crop=32, lr=3e-3, output_weight=1.0, checkpoint_every=1000)
    held_out = torch.stack([ContentCrops(sample_content_paths("eval"), 64)[i] for i in range(4)])

    def fidelity() -> float:
        with torch.no_grad():
            return psnr(student.eval()(held_out), teacher(held_out))

    before = fidelity()
    objective = make_objective(student, teacher, config, None, None, any_teacher=True)
    train(student, objective, ContentCrops(sample_content_paths("train"), 32), config, tmp_path, progress=False)
    after = fidelity()
    assert after > before + 3, (before, after)
    assert load_model(tmp_path).spec == student.current_spec()


def test_make_objective_still_refuses_a_mismatched_teacher_unless_asked(onnx_teacher):
    path, _ = onnx_teacher
    student = EdgeNet(EdgeNetSpec(stem=8, trunk=8, blocks=1))
    config = TrainConfig(output_weight=1.0)
    with pytest.raises(ValueError, match="teacher is a OnnxTeacher"):
        make_objective(student, OnnxTeacher(path, {"style_weights": 0}), config, None, None)


def test_distill_stage_names_a_student_and_a_black_box_teacher():
    stage = DistillStage.model_validate({"student": {"family": "edge_net", "spec": {"blocks": 2}},
                                         "teacher_onnx": "m.onnx", "teacher_inputs": {"style_weights": 19}})
    assert stage.student.family == "edge_net" and stage.teacher_inputs == {"style_weights": 19}
    with pytest.raises(ValueError):
        DistillStage.model_validate({"student": {"family": "edge_net", "widths": [1]}})


def test_teacher_pairs_hold_whole_image_outputs(onnx_teacher):
    from compressor.blackbox import TeacherPairs

    path, _ = onnx_teacher
    teacher = OnnxTeacher(path, {"style_weights": 1})
    pairs = TeacherPairs(sample_content_paths("train")[:1], teacher, size=64, crop=16, length=8)
    whole = pairs.pairs[0]
    assert torch.allclose(whole[3:], teacher(whole[None, :3])[0], atol=1e-6)
    item = pairs[3]
    assert item.shape == (6, 16, 16)
    assert torch.equal(item, pairs[3])  # a pure function of the index (resumable runs)
    with pytest.raises(ValueError, match="larger than a training photo"):
        TeacherPairs(sample_content_paths("train")[:1], teacher, size=32, crop=48)


@pytest.mark.parametrize("teacher_spec", [
    {"family": "multistyle", "n_styles": 1, "contract": [8, 8, 16], "res_inner": [16] * 3, "expand": [8, 4]},
    {"family": "transformer_net", "conv1": 8, "conv2": 8, "trunk": 16, "res_inner": [16] * 5, "deconv1": 8,
     "deconv2": 8},
])
def test_a_norm_block_student_starts_from_the_teachers_residual_trunk(teacher_spec):
    from compressor.config import StudentChoice
    from compressor.distill import named_student

    torch.manual_seed(3)
    teacher = create_model(teacher_spec)
    for p in teacher.parameters():
        p.data.normal_()
    choice = StudentChoice(family="edge_net", spec={"block": "norm", "trunk": 16, "stem": 16, "blocks": 2},
                           init="teacher_trunk")
    student = named_student(choice, 0, "distill.student", teacher)
    trunk = get_family(teacher).residual_trunk(teacher)
    for block, weights in zip(student.blocks, trunk):
        got = [(block.body[0][0].weight, block.body[0][1].weight, block.body[0][1].bias),
               (block.body[1].weight, block.body[2].weight, block.body[2].bias)]
        for mine, theirs in zip(got, weights):
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    random = named_student(choice.model_copy(update={"init": "random"}), 0, "distill.student", teacher)
    assert not torch.equal(random.blocks[0].body[1].weight, trunk[0][1][0])
    x = torch.rand(1, 3, 32, 32)
    assert student(x).shape == x.shape


def test_grafting_refuses_what_does_not_fit():
    from compressor.config import StudentChoice
    from compressor.distill import named_student
    from compressor.errors import UserError

    teacher = create_model({"family": "multistyle", "n_styles": 1, "contract": [8, 8, 16], "res_inner": [16] * 2,
                            "expand": [8, 4]})
    cases = [({"block": "conv", "trunk": 16}, "needs block: norm"),
             ({"block": "norm", "stem": 8, "blocks": 2}, "a trunk 16 wide"),
             ({"block": "norm", "trunk": 16, "blocks": 3}, "the teacher has 2 residual blocks")]
    for spec, message in cases:
        with pytest.raises(UserError, match=message):
            named_student(StudentChoice(family="edge_net", spec=spec, init="teacher_trunk"), 0, "s", teacher)
    many = create_model({"family": "multistyle", "n_styles": 3, "contract": [8, 8, 16], "res_inner": [16],
                         "expand": [8, 4]})
    with pytest.raises(UserError, match="select_style"):
        named_student(StudentChoice(family="edge_net", spec={"block": "norm", "stem": 16, "blocks": 1},
                                    init="teacher_trunk"), 0, "s", many)


def test_trunk_weight_matches_the_teachers_trunk_input_and_output():
    from compressor.config import DistillStage, StudentChoice
    from compressor.distill import named_student

    torch.manual_seed(4)
    teacher = create_model({"family": "multistyle", "n_styles": 1, "contract": [8, 8, 16], "res_inner": [16] * 2,
                            "expand": [8, 4]}).eval()
    choice = StudentChoice(family="edge_net", spec={"block": "norm", "norm": "instance", "stem": 16, "trunk": 16,
                                                    "blocks": 2}, init="teacher_trunk")
    student = named_student(choice, 0, "distill.student", teacher)
    config = DistillStage(trunk_weight=1.0, perceptual_weight=0.0)
    objective = make_objective(student, teacher, config, None, None, any_teacher=True)
    batch = torch.rand(2, 3, 32, 32)
    terms = objective(student, batch)
    assert float(terms["trunk"]) > 0
    with torch.no_grad():  # the same term by hand: the teacher's trunk ends vs the student's stem and blocks
        w = torch.ones(1, 1)
        t_in = batch
        for layer in teacher.contract:
            t_in = teacher.relu(layer(t_in, w))
        t_out = t_in
        for inner, outer in teacher.res:
            t_out = t_out + outer(teacher.relu(inner(t_out, w)), w)
        s_in = student.stem(batch)
        s_out = student.blocks(s_in)
        expected = sum((s - t).pow(2).mean() / t.pow(2).mean() for s, t in ((s_in, t_in), (s_out, t_out)))
    assert torch.allclose(terms["trunk"], expected, rtol=1e-4)
    assert set(make_objective(student, teacher, DistillStage(perceptual_weight=0.0), None, None,
                              any_teacher=True)(student, batch)) == {"output", "mse", "total"}
    narrow = create_model({"family": "edge_net", "stem": 8, "trunk": 8, "blocks": 1})
    with pytest.raises(ValueError, match="the student's trunk is"):
        make_objective(narrow, teacher, config, None, None, any_teacher=True)(narrow, batch)
    with pytest.raises(ValueError, match="unset one of them"):
        DistillStage(trunk_weight=1.0, paired_size=64)


MANY = {"family": "multistyle", "n_styles": 3, "contract": [8, 8, 16], "res_inner": [16] * 2, "expand": [8, 4]}
MANY_STUDENT = {"unshuffle": 2, "down": 1, "stem": 16, "trunk": 16, "blocks": 2, "block": "norm", "norm": "instance",
                "n_styles": 3, "out_norm": True}


def test_a_multi_style_student_takes_style_weights_like_its_teacher(tmp_path):
    from compressor.config import StudentChoice
    from compressor.distill import named_student
    from compressor.models import save_model
    from compressor.models.conditional_norm import parse_style_weights

    torch.manual_seed(5)
    teacher = create_model(MANY).eval()
    for p in teacher.parameters():
        p.data.normal_(1.0, 0.5)
    student = named_student(StudentChoice(family="edge_net", spec=MANY_STUDENT, init="teacher_trunk"), 0, "s", teacher)
    trunk = get_family(teacher).residual_trunk(teacher)
    assert torch.equal(student.blocks[1].body[2].gamma, trunk[1][1][1])  # the [3, 16] tables, every style
    assert torch.equal(student.out_norm[0].beta, teacher.expand[-1].norm.beta)  # each style's output colours
    family = get_family(student)
    assert family.io_names(student) == (["image", "style_weights"], ["stylized"]) and family.n_styles(student) == 3
    x, blend = torch.rand(2, 3, 32, 32), parse_style_weights("0:0.25,2:0.75", 3)
    with torch.no_grad():
        one, other = student(x, parse_style_weights(0, 3)), student(x, parse_style_weights(2, 3))
        assert (one - other).abs().mean() > 1e-3  # the style input matters
        single = family.select_style(student, "0:0.25,2:0.75")
        assert get_family(single).n_styles(single) == 1
        torch.testing.assert_close(single(x), student(x, blend))
    with pytest.raises(ValueError, match="needs style_weights"):
        student(x)
    folder = save_model(student, tmp_path / "student")
    torch.testing.assert_close(load_model(folder)(x, blend), student(x, blend))
    with pytest.raises(ValueError, match="needs instance norms"):
        create_model({"family": "edge_net", "n_styles": 3})


@pytest.mark.parametrize("unshuffle,kernel", [(2, 9), (2, 5), (4, 9), (1, 3)])
def test_an_unshuffled_kernel_computes_the_full_resolution_conv(unshuffle, kernel):
    import torch.nn.functional as F

    torch.manual_seed(0)
    weight, x = torch.randn(3, 4, kernel, kernel, dtype=torch.float64), torch.randn(1, 4, 24, 32, dtype=torch.float64)
    small = unshuffled_kernel(weight, unshuffle)
    got = F.pixel_shuffle(F.conv2d(F.pixel_unshuffle(x, unshuffle), small, padding=small.shape[-1] // 2), unshuffle)
    torch.testing.assert_close(got, F.conv2d(x, weight, padding=kernel // 2))


def test_a_tail_starts_as_the_teachers_last_layers(tmp_path):
    from compressor.config import StudentChoice
    from compressor.distill import named_student
    from compressor.errors import UserError
    from compressor.models import save_model

    torch.manual_seed(7)
    teacher = create_model(MANY).eval()
    for p in teacher.parameters():
        p.data.normal_(1.0, 0.5)
    choice = StudentChoice(family="edge_net", spec={**MANY_STUDENT, "tail": 4}, init="teacher_trunk")
    student = named_student(choice, 0, "s", teacher).eval()
    norm, _, rgb = student.tail
    assert torch.equal(rgb.weight, unshuffled_kernel(teacher.expand[-1].conv.weight, 2))  # the 9x9 RGB conv
    assert torch.equal(norm.gamma[:, ::4], teacher.expand[-2].norm.gamma)  # each style's norm of its input
    assert torch.equal(norm.gamma[:, 3::4], teacher.expand[-2].norm.gamma)  # for each of the 4 pixel phases
    x, w = torch.rand(1, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(load_model(save_model(student, tmp_path))(x, w), student(x, w))
    wider = choice.model_copy(update={"spec": {**MANY_STUDENT, "tail": 8}})
    with pytest.raises(UserError, match="tail: 4, tail_kernel: 9"):
        named_student(wider, 0, "s", teacher)


def test_a_multi_style_student_learns_every_style_of_its_teacher():
    from compressor.config import DistillStage, StudentChoice
    from compressor.distill import named_student

    torch.manual_seed(6)
    teacher = create_model(MANY).eval()
    student = named_student(StudentChoice(family="edge_net", spec=MANY_STUDENT, init="teacher_trunk"), 0, "s", teacher)
    seen = []
    forward = teacher.forward
    teacher.forward = lambda x, w=None: seen.append(w) or forward(x, w)
    config = DistillStage(trunk_weight=1.0, perceptual_weight=0.0)
    batch = torch.rand(4, 3, 32, 32)
    terms = make_objective(student, teacher, config, None, None, any_teacher=True)(student, batch)
    assert float(terms["trunk"]) > 0 and torch.isfinite(terms["total"])
    assert seen[0].shape == (4, 3) and torch.allclose(seen[0].sum(1), torch.ones(4))  # a mix per photo
    with pytest.raises(ValueError, match="holding the same 3 styles"):
        one = create_model({**MANY, "n_styles": 1})
        make_objective(student, one, config, None, None, any_teacher=True)


def test_the_cli_distils_an_edge_student_from_its_teacher_without_a_style_image(tmp_path):
    """An edge_net student learns its teacher's pictures alone: no style image asked for, none used."""
    from typer.testing import CliRunner

    from compressor.models import save_model
    from styleslim.cli import app

    torch.manual_seed(0)
    teacher, student = (save_model(create_model({"family": "edge_net"}), tmp_path / name) for name in ("t", "s"))
    result = CliRunner().invoke(app, ["distill", str(student), "--teacher", str(teacher), "-o", str(tmp_path / "o"),
                                      "--steps", "1", "--crop", "32", "--batch-size", "2", "--loss-network", "random",
                                      "--perceptual-weight", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "weights.safetensors").is_file()
