"""The README's device commands on an emulated Raspberry Pi, as a user would run them.

A full-system arm64 Debian VM (qemu-system-aarch64, CPU pinned: cortex-a72 = Pi 4, cortex-a76 = Pi 5) boots;
``pip install privsplit[edge]`` runs in it offline from aarch64 wheels; ``privsplit flash`` installs the signed
edge bundles over real SSH (--trust-key, --keep, --rollback; the device runs the acceptance check before each
switch); ``privsplit edge infer`` in the guest asks ``privsplit serve`` on the host (bound to 127.0.0.1, dialled
as 10.0.2.2); ``privsplit edge bench --json`` records the machine and labels its timings as emulated. Then:
labels equal the x86 run's, and the INT8 wire features of LiteRT and onnxruntime are identical to x86, on the
digits bundle and on a 64 px CelebA-shaped bundle. Gate: test_emulated_pi_support (skips without
PRIVSPLIT_EMULATED_PI, FAILS with it when the image is missing or broken).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_edge_support import holdout, write_pngs
from test_emulated_pi_support import TOOL, gated, project_wheel, require_image

pytestmark = [pytest.mark.slow, gated]  # gated: skips before any training when the gate is unset

DEVICE = "/srv/privsplit"
IMAGES = 8  # inputs sent through infer
VECTORS = 64  # inputs whose wire features are compared bit for bit


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "privsplit.cli.main", *map(str, args)]


@dataclass
class Exported:
    name: str
    edge: Path
    cloud: Path
    version: str
    pixels: Path  # uint8 (VECTORS, size, size, C) .npy
    pngs: list[Path]
    x86_wire: dict  # encoder -> int8 wire features on this host
    x86_labels: list[int]
    port: int = 0


class Served:
    """`privsplit serve` of a cloud bundle on 127.0.0.1, port chosen by the server."""

    def __init__(self, cloud: Path, trust_key: Path) -> None:
        self.trust_key = trust_key
        self.proc = subprocess.Popen(
            _cli("serve", cloud, "--port", 0, "--host", "127.0.0.1", "--trust-key", trust_key),
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.port = 0
        deadline = time.time() + 120
        while time.time() < deadline and not self.port:
            line = self.proc.stderr.readline() if self.proc.stderr else ""
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
        if not self.port:
            self.proc.kill()
            raise AssertionError("privsplit serve did not start: " + "".join(self.lines[-5:]))
        threading.Thread(target=lambda: [self.lines.append(ln) for ln in self.proc.stderr or []], daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _export(run_dir: Path, out: Path, keys, name: str):
    from privsplit.export import ExportFormat, export_run

    return export_run(
        run_dir,
        out,
        formats=(ExportFormat.TFLITE_INT8, ExportFormat.ONNX_INT8),
        calibration=64,
        holdout_limit=128,
        sign_key=keys.private,
        tolerance=0.99,  # bit parity between machines is the point here, not the accuracy of a brief training
        version=f"{name}-pi",
        progress=False,
    )


def _x86(name: str, result, run_dir: Path, work: Path, served: Served) -> Exported:
    images, _ = holdout(run_dir, VECTORS)
    pixels = work / f"{name}-pixels.npy"
    np.save(pixels, images)
    pngs = write_pngs(images[:IMAGES], work / f"{name}-png")
    wire = work / f"{name}-x86.npz"
    proc = subprocess.run(
        [sys.executable, str(TOOL / "wire_features.py"), str(result.edge.root), str(pixels), str(wire)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(wire) as npz:
        x86_wire = {k: npz[k] for k in npz.files if not k.startswith("runtime/")}
    infer = subprocess.run(
        _cli(
            "edge",
            "infer",
            result.edge.root,
            *pngs,
            "--server",
            f"127.0.0.1:{served.port}",
            "--json",
            "--trust-key",
            served.trust_key,
        ),  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert infer.returncode == 0, infer.stderr
    labels = [r["label"] for r in json.loads(infer.stdout)["results"]]
    return Exported(
        name, result.edge.root, result.cloud.root, result.edge.version, pixels, pngs, x86_wire, labels, served.port
    )


@pytest.fixture(scope="session")
def pi_image():
    return require_image()  # session scope, listed first: a missing image fails before minutes of training


@pytest.fixture(scope="module")
def emulated(pi_image, tmp_path_factory, digits_run, celeba_dir):
    """The image, the project's wheel, two signed exports (digits; 64 px CelebA, briefly trained) and their
    x86 references, each served by `privsplit serve` on this host."""
    from privsplit.export import generate_keys
    from privsplit.train import TrainConfig, train_run

    image = pi_image
    work = tmp_path_factory.mktemp("emulated-pi")
    wheel = project_wheel(work / "wheel")
    keys = generate_keys(work / "keys" / "signer")
    celeba_run = work / "run-celeba64"
    train_run(
        f"celeba:{celeba_dir}",
        celeba_run,
        task="Smiling",
        private="Male",
        image_size=64,
        limit=400,
        seed=0,
        config=TrainConfig.unprotected(epochs=1),
        progress=False,
    )
    servers, exported = [], {}
    try:
        for name, run_dir in (("digits", digits_run), ("celeba64", celeba_run)):
            result = _export(run_dir, work / f"export-{name}", keys, name)
            served = Served(result.cloud.root, keys.public)
            servers.append(served)
            exported[name] = _x86(name, result, run_dir, work, served)
        yield image, wheel, keys, exported, work
    finally:
        for served in servers:
            served.stop()


def _flash(pi, *args) -> subprocess.CompletedProcess:
    target = ["--to", pi.url(DEVICE), "--identity", pi.identity, "--known-hosts", pi.known_hosts]
    return subprocess.run(_cli("flash", *args, *target), capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_the_device_commands_on_an_emulated_pi_match_x86(emulated, cpu, tmp_path):
    from vm import HOST_FROM_GUEST, EmulatedPi, install_privsplit

    image, wheel, keys, exported, _ = emulated
    digits, celeba = exported["digits"], exported["celeba64"]
    timings: dict[str, float] = {}
    t = time.monotonic()
    with EmulatedPi(image, cpu=cpu, workdir=tmp_path / "vm") as pi:
        timings["boot"] = pi.boot_seconds
        timings["pip install privsplit[edge]"] = install_privsplit(pi, wheel)
        t_step = time.monotonic()

        # flash over SSH: digits, then the CelebA-shaped bundle, then roll back to digits (keep 2)
        for bundle in (digits, celeba):
            done = _flash(pi, bundle.edge, "--trust-key", keys.public, "--keep", "2")
            assert done.returncode == 0, done.stderr
            assert "acceptance check passed on aarch64" in done.stdout  # run on the device, over ssh
        back = _flash(pi, "--rollback")
        assert back.returncode == 0 and f"current -> releases/{digits.version}" in back.stdout, back.stderr
        assert pi.ssh(f"readlink {DEVICE}/current").stdout.strip() == f"releases/{digits.version}"
        selftest = pi.ssh(f"privsplit edge selftest {DEVICE}/current --json", step="selftest")
        assert json.loads(selftest.stdout)["status"] == "passed"
        timings["flash x2 + rollback + selftest"] = time.monotonic() - t_step
        t_step = time.monotonic()

        # inputs to the guest: the PNGs for infer, the pixels and the script for the wire features
        pi.ssh("mkdir -p /tmp/in")
        pi.put([TOOL / "wire_features.py", digits.pixels, celeba.pixels], "/tmp/in/")
        for bundle in (digits, celeba):
            pi.ssh(f"mkdir -p /tmp/in/{bundle.name}-png")
            pi.put(bundle.pngs, f"/tmp/in/{bundle.name}-png/")
        for bundle in (digits, celeba):
            release = f"{DEVICE}/releases/{bundle.version}"
            pi.ssh(
                f"/opt/privsplit/bin/python /tmp/in/wire_features.py {release} /tmp/in/{bundle.pixels.name} "
                f"/tmp/in/{bundle.name}-arm.npz",
                step="wire features in the guest",
            )
            pi.get(f"/tmp/in/{bundle.name}-arm.npz", tmp_path / f"{bundle.name}-arm.npz")
            with np.load(tmp_path / f"{bundle.name}-arm.npz") as npz:
                runtimes = {k.split("/", 1)[1]: str(npz[k]) for k in npz.files if k.startswith("runtime/")}
                assert runtimes == {"tflite-int8": "litert", "onnx-int8": "onnxruntime"}
                for encoder, want in bundle.x86_wire.items():
                    got = npz[encoder]
                    assert got.shape == want.shape == (VECTORS, *want.shape[1:])
                    differ = int((got != want).sum())
                    assert differ == 0, f"{bundle.name} {encoder} on {cpu}: {differ} of {got.size} int8 values differ"
        timings["wire features (2 bundles x 2 runtimes)"] = time.monotonic() - t_step
        t_step = time.monotonic()

        # infer in the guest against privsplit serve on the host (10.0.2.2 is the host's loopback)
        for bundle in (digits, celeba):
            release = f"{DEVICE}/releases/{bundle.version}"
            got = pi.ssh(
                f"privsplit edge infer {release} /tmp/in/{bundle.name}-png --server {HOST_FROM_GUEST}:{bundle.port} "
                "--json",
                step="edge infer in the guest",
            )
            report = json.loads(got.stdout)
            assert report["failed"] == 0
            assert [r["label"] for r in report["results"]] == bundle.x86_labels
        timings["infer (2 bundles)"] = time.monotonic() - t_step
        t_step = time.monotonic()

        pi.ssh(
            f"privsplit edge bench {DEVICE}/current --runs 20 --warmup 2 --server {HOST_FROM_GUEST}:{digits.port} "
            "--json /tmp/bench.json",
            step="edge bench in the guest",
        )
        pi.get("/tmp/bench.json", tmp_path / "bench.json")
        bench = json.loads((tmp_path / "bench.json").read_text())
        machine = bench["platform"]
        assert machine["machine"] == "aarch64"
        assert {"cortex-a72": "Cortex-A72", "cortex-a76": "Cortex-A76"}[cpu] in machine["cpu"]
        assert machine["emulated"] == f"qemu-system-aarch64:{cpu}" and machine["timings"].startswith("emulated")
        assert bench["runs"] == 20 and bench["p50_ms"] > 0
        timings["bench"] = time.monotonic() - t_step
    timings["total (boot to power-off)"] = time.monotonic() - t
    print(f"\nemulated Pi {cpu}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
