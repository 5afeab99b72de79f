"""Fixtures of the deployment checks (helpers in deploy_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helper modules of these tests (kustomize.py, deploy_support.py) import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_support import BUILDS, Resource, render

# The container images, built once per session for every test_images*.py module.
from image_support import image, postgres_build, postgres_image, usable  # noqa: F401


@pytest.fixture(scope="session")
def builds() -> dict[str, list[Resource]]:
    """Every kustomization of deploy/, rendered once per session."""
    return {name: render(directory) for name, directory in BUILDS.items()}
