"""Shared fixtures: paths to the shared real data and small trained runs (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
CELEBA = SHARED_DATA / "celeba-10k"


def pytest_configure(config):
    # Two cores: keep torch from oversubscribing when tests run beside other work.
    try:
        import torch

        torch.set_num_threads(min(2, torch.get_num_threads()))
    except ImportError:  # the edge-only environment has no torch
        pass


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    if not (CELEBA / "list_attr_celeba.txt").is_file():
        pytest.skip(f"CelebA 10k not found at {CELEBA} (see ../shared/data/README.md)")
    return CELEBA


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A small unprotected digits run (2 epochs), shared by tests that need any trained run."""
    from privsplit.train import TrainConfig, train_run

    out = tmp_path_factory.mktemp("runs") / "digits"
    train_run("digits", out, seed=0, config=TrainConfig.unprotected(epochs=4), progress=False)
    return out
