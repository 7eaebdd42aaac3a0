"""Shared test fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The runtime finds an installed Vosk model in the user's data directory (edge-mer models fetch):
# tests (and the processes they start) get an empty one of their own, so a developer's installed
# model cannot change what a test sees. Tests of the data directory set their own.
os.environ["EDGE_MER_DATA"] = tempfile.mkdtemp(prefix="edge-mer-test-data-")
SHARED_DATA = Path(os.environ.get("EDGE_MER_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """Path inside ../shared/data; skips the calling test (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared real data), which is absent here")
    return path


@pytest.fixture
def shared():
    return shared_data
