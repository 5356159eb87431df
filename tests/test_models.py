import json
import subprocess
import sys

import pytest
import torch

from compressor.models import (
    AdaINNet,
    CheckpointMismatch,
    STNSpec,
    TransformerNet,
    TransformerNetSpec,
    VGG19Spec,
    VGGWeightsUnavailable,
    load_adain,
    load_fast_neural_style,
    load_model,
    load_vgg19,
    save_model,
)
from compressor.models.adain import adaptive_instance_norm

X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _fast_neural_style_state(model: TransformerNet) -> dict[str, torch.Tensor]:
    """A pytorch/examples-layout state dict: same keys plus the legacy InstanceNorm running stats."""
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(module.num_features)
            state[f"{name}.running_var"] = torch.ones(module.num_features)
    return state


def test_transformer_net_shapes_and_spec_round_trip(tmp_path):
    spec = TransformerNetSpec(conv1=16, conv2=24, trunk=40, res_inner=[8, 16, 24, 32, 40], deconv1=24, deconv2=16)
    model = TransformerNet(spec)
    assert model(X).shape == X.shape
    assert model.current_spec() == spec
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.current_spec() == spec
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert torch.equal(model(X), again(X))
    doc = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert doc["spec"]["family"] == "transformer_net" and len(doc["meta"]["weights_sha256"]) == 64


def test_fast_neural_style_checkpoint_loads_with_0_255_convention(tmp_path):
    reference = TransformerNet()
    state = _fast_neural_style_state(reference)
    torch.save(state, tmp_path / "udnie.pth")
    loaded = load_fast_neural_style(tmp_path / "udnie.pth")
    reference.load_state_dict({k: v for k, v in state.items() if "running" not in k})
    assert loaded.spec.style == "udnie"
    assert torch.equal(loaded(X), reference(X))

    # The reference implementation maps 0-255 RGB to 0-255 RGB; ours is the same map on [0, 1].
    y = X * 255
    for name in ["conv1", "conv2", "conv3"]:
        y = torch.relu(getattr(reference, "in" + name[-1])(getattr(reference, name)(y)))
    for i in range(1, 6):
        y = getattr(reference, f"res{i}")(y)
    y = torch.relu(reference.in4(reference.deconv1(y)))
    y = torch.relu(reference.in5(reference.deconv2(y)))
    torch.testing.assert_close(loaded(X) * 255, reference.deconv3(y))


def test_wrong_checkpoint_names_mismatched_layers(tmp_path):
    state = _fast_neural_style_state(TransformerNet())
    state["deconv3.conv2d.weight"] = torch.zeros(3, 32, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatch, match=r"deconv3\.conv2d\.weight: checkpoint \(3, 32, 5, 5\)"):
        load_fast_neural_style(tmp_path / "bad.pth")


def test_model_folder_with_foreign_weights_names_layers(tmp_path):
    save_model(TransformerNet(), tmp_path / "m")
    from safetensors.torch import save_file

    save_file({"conv1.conv2d.weight": torch.zeros(2, 2, 1, 1)}, str(tmp_path / "m" / "weights.safetensors"))
    with pytest.raises(CheckpointMismatch) as err:
        load_model(tmp_path / "m")
    assert "conv1.conv2d.weight" in str(err.value) and "missing res1.conv1.conv2d.weight" in str(err.value)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"conv1.conv2d.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        load_fast_neural_style(tmp_path / "evil.pth")


def test_stn_starts_as_identity_and_runs():
    model = TransformerNet(TransformerNetSpec(stn=STNSpec()))
    torch.testing.assert_close(model.stn(X), X, atol=1e-5, rtol=0)
    assert model(X).shape == X.shape
    assert model.current_spec().stn == STNSpec()


def test_vgg_taps_truncation_and_pooling():
    vgg = load_vgg19("random", VGG19Spec(taps=["relu1_1", "conv2_2", "relu3_1"], pooling="avg"))
    out = vgg(X)
    assert list(out) == ["relu1_1", "conv2_2", "relu3_1"]
    assert out["relu3_1"].shape == (1, 256, 16, 16)
    assert len(vgg.features) == vgg.layer_names.index("relu3_1") + 1
    assert not any(getattr(m, "inplace", False) for m in vgg.modules())
    assert vgg.weights_source == "random(seed=0)"
    assert torch.equal(load_vgg19("random").features[0].weight, load_vgg19("random").features[0].weight)


def test_vgg_imagenet_unavailable_fails_clearly_or_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: no ImageNet weights here
    import compressor.models.vgg as vgg_module

    def offline():
        raise VGGWeightsUnavailable("VGG19 ImageNet weights are not in the torch hub cache")

    monkeypatch.setattr(vgg_module, "_imagenet_state_dict", offline)
    with pytest.raises(VGGWeightsUnavailable, match="torch hub cache"):
        load_vgg19("imagenet")
    net = load_vgg19("imagenet", allow_fallback=True)
    assert net.weights_source.startswith("random")
    assert "FALLING BACK" in caplog.text


def test_vgg_loads_local_torchvision_state_dict(tmp_path):
    import torchvision

    tv = torchvision.models.vgg19()
    torch.save(tv.state_dict(), tmp_path / "vgg19.pth")
    net = load_vgg19(str(tmp_path / "vgg19.pth"), VGG19Spec(taps=["relu2_1"]))
    assert torch.equal(net.features[5].weight, tv.features[5].weight)
    assert net.weights_source.startswith("file(")


def test_adain_alpha_zero_reproduces_decoder_of_content_features():
    model = AdaINNet().eval()
    style = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(X, style, alpha=0.0), model.decoder(model.encoder(X)))
        full = model(X, style, alpha=1.0)
        expected = model.decoder(adaptive_instance_norm(model.encoder(X), model.encoder(style)))
    torch.testing.assert_close(full, expected)
    assert full.shape == X.shape


def test_adain_loads_reference_layout(tmp_path):
    reference = AdaINNet()
    vgg_state = {k: torch.randn_like(v) for k, v in reference.encoder.state_dict().items()}
    # vgg_normalised.pth holds the whole VGG (to relu5_4); only the first 31 modules are the encoder.
    vgg_state["31.weight"] = torch.randn(512, 512, 3, 3)
    torch.save(vgg_state, tmp_path / "vgg_normalised.pth")
    dec_state = {k: torch.randn_like(v) for k, v in reference.decoder.state_dict().items()}
    torch.save(dec_state, tmp_path / "decoder.pth")
    model = load_adain(tmp_path / "vgg_normalised.pth", tmp_path / "decoder.pth")
    assert torch.equal(model.encoder[0].weight, vgg_state["0.weight"])
    assert torch.equal(model.decoder[-1].weight, dec_state[f"{len(reference.decoder) - 1}.weight"])


@pytest.mark.slow  # ~20-30 s on a shared 2-core machine
def test_loading_a_model_folder_does_not_need_torch_pruning(tmp_path):
    save_model(TransformerNet(TransformerNetSpec(trunk=64, res_inner=[32] * 5)), tmp_path / "m")
    code = (
        "import sys; sys.modules['torch_pruning'] = None\n"
        "import torch; from compressor.models import load_model\n"
        f"m = load_model(r'{tmp_path / 'm'}'); print(m(torch.rand(1, 3, 32, 32)).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch.Size([1, 3, 32, 32])" in out.stdout
