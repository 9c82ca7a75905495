"""What the command tests share: a tiny gated model saved as a ``.keras`` file."""

import pytest
from tiny_fixtures import tiny_gated_model


@pytest.fixture
def model_file(tmp_path):
    """An untrained tiny gated model as ``tmp_path/tiny.keras``."""
    path = str(tmp_path / "tiny.keras")
    tiny_gated_model().save(path)
    return path
