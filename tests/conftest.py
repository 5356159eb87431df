import pytest
import torch

torch.set_num_threads(2)
FRESH_CLI_BYTES = 800 * 2**20  # about what a fresh `styleslim stylize` process holds (above tiling.BASELINE_BYTES)


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch):
    """Plan stylize memory as a fresh CLI process would: the test process holds whatever earlier tests loaded."""
    monkeypatch.setattr("compressor.tiling.resident_bytes", lambda: FRESH_CLI_BYTES)


@pytest.fixture(scope="session")
def random_vgg():
    """The seeded random-init loss network: offline, deterministic, and what CI machines fall back to."""
    from compressor.models import load_vgg19

    return load_vgg19("random")


@pytest.fixture(scope="session")
def skimage_data():
    """scikit-image's sample images (shipped in its wheel): real photos, nothing beside the repository needed."""
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files("skimage") / "data"))
