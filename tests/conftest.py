"""Shared fixtures: paths to the shared real data, a small trained run and the signed bundles exported
from it (each built once per session, under pytest's session temp folder)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
CELEBA = SHARED_DATA / "celeba-10k"


def pytest_configure(config):
    # Frame-keyed bundles off a device key their noise with a per-user file: keep the tests' out of $HOME.
    import os
    import tempfile

    os.environ.setdefault(
        "PRIVSPLIT_NOISE_KEY", str(Path(tempfile.mkdtemp(prefix="privsplit-noise-key-")) / "noise.key")
    )
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


@dataclass(frozen=True)
class Bundles:
    """What one export of ``digits_run`` (a copy with an untrained purifier) leaves for the edge, cloud and
    flash tests."""

    edge: Path  # signed: tflite-int8 (default) + onnx-fp32
    cloud: Path  # signed, the matching server with the purifier
    cloud_plain: Path  # the cloud bundle without the purifier, unsigned
    noisy: Path  # the edge bundle with fresh channel noise of sigma 0.5, unsigned
    trust_key: Path  # the signer's public key
    key_id: str  # the signer's key id (as generated)
    other_key: Path  # a key that did not sign
    run: Path  # the exported run folder (digits_run plus the purifier)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, digits_run) -> Bundles:
    """Signed bundles exported from ``digits_run``: the TFLite full-int8 and ONNX fp32 encoders, the server
    and a real (untrained, seeded) purifier module that the host must chain exactly as exported; a cloud
    copy without the purifier and an edge copy with channel noise, written with the export's own bundle
    writer. Torch is imported here only, so torch-free tests that do not ask for it never load it."""
    import torch
    from test_edge_support import rewrite_bundle

    from privsplit.bundle import BundleKind, load_bundle
    from privsplit.export import ExportFormat, export_run, generate_keys
    from privsplit.export.bundle_writer import write_bundle
    from privsplit.models.purifier import Purifier, PurifierConfig, save_purifier
    from privsplit.run import RunFolder

    root = tmp_path_factory.mktemp("bundles")
    run = RunFolder(root / "run")
    shutil.copytree(digits_run, run.path)
    torch.manual_seed(0)
    data = run.dataset()
    save_purifier(run, Purifier(PurifierConfig(num_classes=len(data.classes[data.task]))).eval())
    keys = generate_keys(root / "keys" / "signer")
    generate_keys(root / "keys" / "other")
    export_run(
        run,
        root / "export",
        formats=(ExportFormat.TFLITE_INT8, ExportFormat.ONNX_FP32),
        calibration=64,
        holdout_limit=128,
        sign_key=keys.private,
        progress=False,
    )
    edge, cloud, plain = root / "export" / "edge", root / "export" / "cloud", root / "plain"
    shutil.copytree(cloud, plain)
    for name in ("manifest.json", "manifest.sig", "purifier.onnx"):
        (plain / name).unlink()
    signed = load_bundle(cloud, kind=BundleKind.CLOUD)
    generated = ("schema_version", "kind", "version", "created", "files")
    body = {k: v for k, v in signed.manifest.items() if k not in generated}
    write_bundle(plain, kind=BundleKind.CLOUD, version=signed.version + "-plain", body={**body, "purifier": None})
    features = load_bundle(edge, kind=BundleKind.EDGE).manifest["features"]
    noisy = rewrite_bundle(
        edge,
        root / "noisy",
        version=signed.version + "-noisy",
        features={**features, "noise_sigma": 0.5, "noise_keying": "fresh"},
    )
    return Bundles(
        edge=edge,
        cloud=cloud,
        cloud_plain=plain,
        noisy=noisy,
        trust_key=keys.public,
        key_id=keys.key_id,
        other_key=root / "keys" / "other.pub",
        run=run.path,
    )
