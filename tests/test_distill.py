"""Distillation / fine-tuning loop: every family's objective learns, resume is bit-exact, DDP stays in sync."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from compressor.data import ContentCrops, sample_content_paths
from compressor.distill import (
    CHECKPOINT_FILE,
    TrainConfig,
    batch_for_step,
    make_objective,
    train,
)
from compressor.losses import style_grams
from compressor.models import (
    AdaINNet,
    AdaINSpec,
    TransformerNet,
    TransformerNetSpec,
    VGG19LossNet,
    VGG19Spec,
    load_model,
    load_vgg19,
)

CROP = 32
TEACHER_SPEC = TransformerNetSpec(conv1=8, conv2=16, trunk=16, res_inner=[16] * 5, deconv1=16, deconv2=8)
STUDENT_SPEC = TransformerNetSpec(conv1=4, conv2=8, trunk=8, res_inner=[8] * 5, deconv1=8, deconv2=4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-exact comparisons across processes need the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vgg() -> VGG19LossNet:
    return load_vgg19("random")


@pytest.fixture(scope="module")
def data() -> ContentCrops:
    return ContentCrops(sample_content_paths("train"), CROP, length=64)


@pytest.fixture(scope="module")
def grams(vgg) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return style_grams(vgg, torch.rand(1, 3, 64, 64))


def _tiny(cls, spec, seed=0):
    torch.manual_seed(seed)
    return cls(spec)


def _loss_on_fixed_batch(objective, model, data, term) -> float:
    torch.manual_seed(123)
    with torch.no_grad():
        return float(objective(model, batch_for_step(data, 99, 0, 4))[term])


def _learns(student, objective, data, config, tmp_path, term="total") -> tuple[float, float]:
    """``term`` on a held-out batch before and after training."""
    before = _loss_on_fixed_batch(objective, student, data, term)
    train(student, objective, data, config, tmp_path / "out", progress=False)
    return before, _loss_on_fixed_batch(objective, student, data, term)


def test_transformer_student_learns_from_teacher(vgg, data, grams, tmp_path):
    teacher = _tiny(TransformerNet, TEACHER_SPEC, seed=1)
    with torch.no_grad():  # a random net's output is nearly flat; give the teacher a picture worth copying
        teacher.deconv3.conv2d.weight.mul_(30)
    student = _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=10, batch_size=2, crop=CROP, lr=1e-2, style_weight=1e3, output_weight=10.0,
                         perceptual_weight=1.0)
    objective = make_objective(student, teacher, config, vgg, grams)
    terms = objective(student, batch_for_step(data, 0, 0, 2))
    assert set(terms) == {"content", "style", "tv", "output", "perceptual", "total"}
    before, after = _learns(student, objective, data, config, tmp_path, "output")
    assert after < 0.93 * before
    saved = load_model(tmp_path / "out")
    assert saved.current_spec() == STUDENT_SPEC.model_copy(update={"style": None})
    assert saved.meta["steps_done"] == 10


def test_each_weight_scales_its_term(vgg, data, grams):
    teacher = _tiny(TransformerNet, TEACHER_SPEC, seed=1)
    student = _tiny(TransformerNet, STUDENT_SPEC)
    names = ["content", "style", "tv", "output", "perceptual"]
    batch = batch_for_step(data, 0, 0, 2)
    values = []
    for scale in (1.0, 3.0):
        config = TrainConfig(crop=CROP, **{f"{n}_weight": scale * (i + 1) for i, n in enumerate(names)})
        with torch.no_grad():
            values.append(make_objective(student, teacher, config, vgg, grams)(student, batch))
    for name in names:
        assert float(values[0][name]) > 0
        assert float(values[1][name]) == pytest.approx(3 * float(values[0][name]), rel=1e-5)
    off = TrainConfig(crop=CROP, output_weight=0.0, perceptual_weight=0.0)
    with torch.no_grad():
        assert {"output", "perceptual"}.isdisjoint(make_objective(student, teacher, off, vgg, grams)(student, batch))


def test_vgg_student_distils_taps_through_projections(data, tmp_path):
    taps = ["relu1_1", "relu2_1", "relu3_1"]
    teacher_spec = VGG19Spec(taps=taps)
    torch.manual_seed(0)
    teacher = load_vgg19("random", spec=teacher_spec)
    # Widths quartered, relu1_1 kept at 64 (compared directly), the other taps through 1x1 projections.
    widths = [64, *(w // 4 for w in teacher_spec.widths[1:])]
    student_spec = VGG19Spec(taps=taps, widths=widths, projections={"relu2_1": 128, "relu3_1": 256})
    student = _tiny(VGG19LossNet, student_spec)
    config = TrainConfig(steps=15, batch_size=2, crop=CROP, lr=3e-3)
    objective = make_objective(student, teacher, config, load_vgg19("random"), None)
    before, after = _learns(student, objective, data, config, tmp_path)
    assert after < 0.8 * before
    assert set(load_model(tmp_path / "out").projections) == {"relu2_1", "relu3_1"}


def test_vgg_student_without_projection_names_the_tap(data):
    teacher = load_vgg19("random", spec=VGG19Spec(taps=["relu1_1", "relu2_1"]))
    student = VGG19LossNet(VGG19Spec(taps=["relu1_1", "relu2_1"], widths=[64, 64, 64, *[8] * 13]))
    objective = make_objective(student, teacher, TrainConfig(crop=CROP), load_vgg19("random"), None)
    with pytest.raises(ValueError, match="relu2_1.*projections"):
        objective(student, batch_for_step(data, 0, 0, 1))


ADAIN_TEACHER = AdaINSpec(encoder=[4, 4, 8, 8, 16, 16, 16, 16, 32], decoder=[16, 16, 16, 16, 8, 8, 4, 4])


def test_adain_student_learns(vgg, data, tmp_path):
    teacher = _tiny(AdaINNet, ADAIN_TEACHER, seed=1)
    student_spec = ADAIN_TEACHER.model_copy(update={"decoder": [8, 8, 8, 8, 4, 4, 2, 2]})
    student = _tiny(AdaINNet, student_spec)
    student.encoder.load_state_dict(teacher.encoder.state_dict())
    config = TrainConfig(steps=8, batch_size=2, crop=CROP, lr=1e-2, output_weight=10.0, perceptual_weight=1.0)
    styles = [torch.rand(3, 48, 40), torch.rand(3, 40, 64)]
    objective = make_objective(student, teacher, config, vgg, None, styles)
    assert not any(p.requires_grad for p in student.encoder.parameters()), "unpruned encoder stays frozen"
    encoder_before = {k: v.clone() for k, v in student.encoder.state_dict().items()}
    terms = objective(student, batch_for_step(data, 0, 0, 2))
    assert set(terms) == {"content", "style", "tv", "output", "perceptual", "total"}
    before, after = _learns(student, objective, data, config, tmp_path, "output")
    assert after < 0.5 * before
    assert all(torch.equal(v, student.encoder.state_dict()[k]) for k, v in encoder_before.items())


def test_fine_tuning_without_teacher_and_cosine_schedule(vgg, data, grams, tmp_path):
    student = _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=6, batch_size=2, crop=CROP, lr=1e-2, lr_schedule="cosine", output_weight=1.0,
                         grad_checkpointing=True)
    history = train(student, make_objective(student, None, config, vgg, grams), data, config, tmp_path, progress=False)
    assert {"output", "perceptual"}.isdisjoint(history[0]), "no teacher terms without a teacher"
    lrs = [row["lr"] for row in history]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-3
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 7


def test_a_teacher_alone_with_zero_style_weights_trains_on_its_outputs_only(vgg, data, grams, tmp_path):
    """compress_my_model's setting: the user's network defines the look, not the recipe's style image."""
    teacher, student = _tiny(TransformerNet, TEACHER_SPEC, seed=1), _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=2, batch_size=2, crop=CROP, output_weight=1.0, content_weight=0, style_weight=0,
                         tv_weight=0)
    history = train(student, make_objective(student, teacher, config, vgg, grams), data, config, tmp_path,
                    progress=False)
    assert set(history[0]) == {"step", "lr", "output", "total"}, history[0]
    with pytest.raises(ValueError, match="nothing to learn from"):
        make_objective(student, None, config, vgg, grams)


def test_tensorboard_log_holds_every_step_of_every_term(vgg, data, grams, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    student = _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=3, batch_size=2, crop=CROP, tensorboard=True)
    history = train(student, make_objective(student, None, config, vgg, grams), data, config, tmp_path, progress=False)
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {f"train/{k}" for k in history[0] if k != "step"}
    total = events.Scalars("train/total")
    assert [e.step for e in total] == [1, 2, 3]
    assert [e.value for e in total] == pytest.approx([row["total"] for row in history])


def test_without_tensorboard_the_csv_log_still_runs(vgg, data, grams, tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    student = _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=2, batch_size=2, crop=CROP, tensorboard=True)
    train(student, make_objective(student, None, config, vgg, grams), data, config, tmp_path, progress=False)
    assert "tensorboard is not installed" in caplog.text
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "train_log.csv").read_text().count("\n") == 3


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_autocast_computes_the_student_in_bfloat16(vgg, data, grams, tmp_path, bf16):
    student = _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=2, batch_size=2, crop=CROP, bf16=bf16)
    objective = make_objective(student, None, config, vgg, grams)
    dtypes = []

    def recording(model, batch):
        dtypes.append(model.conv1.conv2d(batch * 255.0).dtype)  # what the first conv computes in, this step
        return objective(model, batch)

    history = train(student, recording, data, config, tmp_path, progress=False)
    assert dtypes == [torch.bfloat16 if bf16 else torch.float32] * 2
    assert all(torch.isfinite(torch.tensor(row["total"])) for row in history)
    assert all(p.dtype == torch.float32 for p in student.parameters()), "weights stay float32 (autocast only)"


def tiny_distillation(out, steps: int, delay: float = 0.0, resume: bool = False) -> TransformerNet:
    """A small teacher-only distillation run; also what the subprocesses below execute."""
    torch.set_num_threads(1)
    judge = load_vgg19("random", spec=VGG19Spec(taps=["relu1_1", "relu2_1"]))
    teacher, student = _tiny(TransformerNet, TEACHER_SPEC, seed=1), _tiny(TransformerNet, STUDENT_SPEC)
    config = TrainConfig(steps=steps, batch_size=2, crop=CROP, lr=3e-3, lr_schedule="cosine", checkpoint_every=2,
                         output_weight=1.0, perceptual_weight=1.0)
    objective = make_objective(student, teacher, config, judge, None)

    def slow(model, batch):
        time.sleep(delay)
        return objective(model, batch)

    data = ContentCrops(sample_content_paths("train"), CROP, length=64)
    train(student, slow, data, config, out, resume=resume, progress=False)
    return student


def test_resuming_with_more_steps_anneals_over_the_new_length(tmp_path):
    """The cosine schedule follows the resumed run's ``steps``: down to 0 at its last step, never back up."""
    tiny_distillation(tmp_path, steps=4)
    tiny_distillation(tmp_path, steps=8, resume=True)
    with open(tmp_path / "train_log.csv") as log:
        rows = [(int(row["step"]), float(row["lr"])) for row in csv.DictReader(log)]
    assert [step for step, _ in rows] == list(range(1, 9))
    resumed = [lr for step, lr in rows if step > 4]
    assert resumed == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * step / 8)) for step in range(5, 9)], abs=1e-9)
    assert resumed[-1] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("family", ["transformer_net", "adain"])
def test_grad_checkpointing_gives_the_same_weights(vgg, data, grams, tmp_path, family):
    weights = []
    for enabled in (False, True):
        if family == "adain":
            student = _tiny(AdaINNet, ADAIN_TEACHER)
            objective = make_objective(student, None, TrainConfig(crop=CROP), vgg, None, [torch.rand(3, 40, 40)])
        else:
            student = _tiny(TransformerNet, STUDENT_SPEC)
            objective = make_objective(student, None, TrainConfig(crop=CROP), vgg, grams)
        config = TrainConfig(steps=2, batch_size=2, crop=CROP, grad_checkpointing=enabled)
        train(student, objective, data, config, tmp_path / str(enabled), progress=False)
        weights.append(student.state_dict())
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
    assert "forward" not in vars(student.res1 if family == "transformer_net" else student.decoder), "unpatched after"


_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from test_distill import tiny_distillation
student = tiny_distillation(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
if "RANK" in os.environ:
    save_file(student.state_dict(), os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".safetensors"))
"""


def _script(tmp_path) -> tuple[str, dict]:
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=os.path.dirname(__file__)))
    return str(script), {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    steps, out = 6, tmp_path / "killed"
    script, env = _script(tmp_path)
    proc = subprocess.Popen([sys.executable, script, str(out), str(steps), "0.5"], env=env)
    ckpt = out / CHECKPOINT_FILE
    deadline = time.time() + 90
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)
    assert 0 < state["step"] < steps, "killed mid-run, after the first checkpoint"
    assert not (out / "weights.safetensors").exists()
    resumed = tiny_distillation(out, steps, resume=True).state_dict()
    straight = tiny_distillation(tmp_path / "straight", steps).state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert load_file(out / "weights.safetensors").keys() == straight.keys()
    log_rows = (out / "train_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in log_rows] == list(range(1, steps + 1))


@pytest.mark.slow  # ~20-30 s on a shared 2-core machine
def test_ddp_two_processes_stay_in_sync(tmp_path):
    out = tmp_path / "ddp"
    script, env = _script(tmp_path)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*launcher, script, str(out), "3", "0"], env=env, check=True, timeout=180)
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    saved = load_file(out / "weights.safetensors")
    initial = _tiny(TransformerNet, STUDENT_SPEC).state_dict()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0), "rank 0 saved its weights"
    assert not torch.equal(saved["conv1.conv2d.weight"], initial["conv1.conv2d.weight"]), "it trained"
    assert len((out / "train_log.csv").read_text().splitlines()) == 4, "rank 0 alone logs"


def test_distill_stage_in_a_recipe_without_prune(tmp_path, monkeypatch):
    import styleslim.stages
    from compressor.config import Recipe
    from styleslim.pipeline import run_recipe

    jitters = []

    class Recorded(ContentCrops):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            jitters.append(self.color_jitter)

    monkeypatch.setattr(styleslim.stages, "ContentCrops", Recorded)
    recipe = Recipe.model_validate({
        "name": "tiny", "loss_network": "random",
        "model": {"family": "transformer_net", "spec": STUDENT_SPEC.model_dump(exclude={"family", "style", "stn"})},
        "distill": {"steps": 2, "crop": CROP, "batch_size": 1, "perceptual_weight": 0.0, "color_jitter": 0.3},
    })
    run_dir = run_recipe(recipe, tmp_path, progress=False)
    assert jitters == [0.3], "the stage's crops are jittered as the recipe says"
    distilled = load_model(run_dir / "distilled")
    assert distilled.current_spec().res_inner == STUDENT_SPEC.res_inner
    assert distilled.meta["student_from"] == str(run_dir / "teacher")
    assert distilled.meta["loss_network"] == "random(seed=0)"


def test_cli_distill_and_fine_tune(tmp_path):
    from typer.testing import CliRunner

    from compressor.models import save_model
    from styleslim.cli import app

    save_model(_tiny(TransformerNet, TEACHER_SPEC.model_copy(update={"style": "starry_night"})), tmp_path / "t")
    save_model(_tiny(TransformerNet, STUDENT_SPEC.model_copy(update={"style": "starry_night"})), tmp_path / "s")
    common = ["--steps", "1", "--crop", str(CROP), "--batch-size", "1", "--loss-network", "random"]
    runner = CliRunner()
    result = runner.invoke(app, ["distill", str(tmp_path / "s"), "-o", str(tmp_path / "d")] + common)
    assert result.exit_code == 2 and "--no-teacher" in result.output
    for out, extra in (("d", ["--teacher", str(tmp_path / "t")]), ("f", ["--no-teacher"])):
        result = runner.invoke(app, ["distill", str(tmp_path / "s"), "-o", str(tmp_path / out), *extra, *common])
        assert result.exit_code == 0, result.output
    assert "output" in (tmp_path / "d" / "train_log.csv").read_text().splitlines()[0]
    assert "output" not in (tmp_path / "f" / "train_log.csv").read_text().splitlines()[0]


def test_a_recipe_distill_stage_resumes_from_its_checkpoint(tmp_path):
    """The pipeline trains with a DistillStage (a TrainConfig with student/teacher fields); its checkpoint resumes."""
    from compressor.config import DistillStage

    torch.set_num_threads(1)
    judge = load_vgg19("random", spec=VGG19Spec(taps=["relu1_1", "relu2_1"]))
    teacher = _tiny(TransformerNet, TEACHER_SPEC, seed=1)
    data = ContentCrops(sample_content_paths("train"), CROP, length=64)
    weights = []
    for steps, resume in ((2, False), (4, True)):
        student = _tiny(TransformerNet, STUDENT_SPEC)
        config = DistillStage(steps=steps, batch_size=2, crop=CROP, checkpoint_every=1, output_weight=1.0,
                              perceptual_weight=0.0)
        history = train(student, make_objective(student, teacher, config, judge, None), data, config, tmp_path,
                        resume=resume, progress=False)
        weights.append(student.state_dict())
    assert [row["step"] for row in history] == [3, 4]  # steps 1-2 came from the checkpoint
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_color_jitter_changes_colours_only_and_replays():
    plain = ContentCrops(sample_content_paths("train"), CROP)
    jittered = ContentCrops(sample_content_paths("train"), CROP, color_jitter=0.4)
    for index in range(4):
        a, b = plain[index], jittered[index]
        assert torch.equal(b, jittered[index]), "a crop is a function of its index"
        assert 0 <= b.min() and b.max() <= 1
        assert (a - b).abs().mean() > 0.01, "colours moved"
        # same geometry: the jittered crop's edges are where the plain crop's are
        edges = [(x[:, :, 1:] - x[:, :, :-1]).abs().mean(0).flatten() for x in (a, b)]
        assert torch.corrcoef(torch.stack(edges))[0, 1] > 0.8
    grey = ContentCrops(sample_content_paths("train"), CROP, color_jitter=0.4)
    grey.images = [img.mean(0, keepdim=True).expand(3, -1, -1).contiguous() for img in grey.images]
    crop = grey[0]
    assert torch.allclose(crop[0], crop[1], atol=1e-5) and torch.allclose(crop[1], crop[2], atol=1e-5), \
        "hue and saturation leave grey alone"


def test_color_jitter_needs_the_teacher_on_each_batch():
    from compressor.config import DistillStage

    with pytest.raises(ValueError, match="color_jitter needs the teacher"):
        DistillStage(color_jitter=0.2, paired_size=64)
