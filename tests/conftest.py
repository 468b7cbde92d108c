"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ON_CI = os.environ.get("CI", "").lower() == "true"


def require_shared(*parts: str) -> Path:
    """Path under ../shared; skipped locally when missing, a failure under CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if ON_CI:
            pytest.fail(f"{path} is missing: CI must provide ../shared")
        pytest.skip(f"{path} not available")
    return path
