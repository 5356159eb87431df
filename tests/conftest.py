import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def random_vgg():
    """The seeded random-init loss network: offline, deterministic, and what CI machines fall back to."""
    from compressor.models import load_vgg19

    return load_vgg19("random")


@pytest.fixture(scope="session")
def shared_data():
    """The project's shared sample images (../shared/data next to the checkout)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    return root
