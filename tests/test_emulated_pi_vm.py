"""The README's device commands on an emulated Raspberry Pi, as a user would run them.

A full-system arm64 Debian VM (qemu-system-aarch64, CPU pinned: cortex-a72 = Pi 4, cortex-a76 = Pi 5) boots;
``pip install privsplit[edge]`` runs in it offline from aarch64 wheels (the image's venv holds the dependencies,
installed from the same wheels when the image was built: pip resolves them, finds them satisfied and installs the
project's wheel, and the test checks that it installed nothing else); ``privsplit flash`` installs both signed
edge bundles (digits; 64 px CelebA-shaped) over real SSH (--trust-key, --keep, --rollback). Before each switch
the device runs the bundle's 64 reference vectors through LiteRT and onnxruntime and compares the INT8 wire
features bit for bit; the vectors are x86's wire features (checked here on the host, through the same
wire_features.py a device would run), so every flash is the bit-for-bit comparison with x86, for both bundles on
both CPU models. That check is ``privsplit edge selftest RELEASE --json`` run in the guest over ssh (the first
flash's verifies by the root it installs with --trust-key, the second's by the device's trust root), so no
separate selftest runs (it would repeat one guest Python start-up and the same comparison). Then, on the release
the rollback made current (digits on cortex-a72, CelebA on cortex-a76: the pair of tests covers both),
``privsplit edge infer`` asks ``privsplit serve`` on the host (bound to 127.0.0.1, dialled as 10.0.2.2) and
must give x86's labels, and ``privsplit edge bench --json`` records the machine and labels its timings as
emulated. Each step's wall time goes into ``emulated-pi-<cpu>.json`` (in ``$PRIVSPLIT_PI_TIMINGS`` when set,
else the test's tmp folder) and the test's output. Gate: test_emulated_pi_support (skips without
PRIVSPLIT_EMULATED_PI, FAILS with it when the image is missing or broken).
"""

from __future__ import annotations

import json
import os
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
VECTORS = 64  # reference vectors per bundle: inputs whose wire features the device compares bit for bit
RUNTIMES = {"tflite-int8": "litert", "onnx-int8": "onnxruntime"}
CPU_NAMES = {"cortex-a72": "Cortex-A72", "cortex-a76": "Cortex-A76"}  # as the guest's /proc/cpuinfo names them
TIMINGS_ENV = "PRIVSPLIT_PI_TIMINGS"  # a folder for emulated-pi-<cpu>.json (the per-step wall times)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "privsplit.cli.main", *map(str, args)]


@dataclass
class Exported:
    name: str
    edge: Path
    cloud: Path
    version: str
    pngs: list[Path]
    x86_wire: dict  # encoder -> int8 wire features of the reference vectors on this host
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
        reference_count=VECTORS,
        progress=False,
    )


def _x86(name: str, result, run_dir: Path, work: Path, served: Served) -> Exported:
    """x86's wire features of the bundle's reference inputs (must equal its vectors) and x86's labels."""
    edge = result.edge.root
    with np.load(edge / result.edge.manifest["reference_vectors"]["file"]) as npz:
        vectors = {k: npz[k] for k in npz.files}
    assert vectors["pixels"].shape[0] == VECTORS
    pixels = work / f"{name}-pixels.npy"
    np.save(pixels, vectors["pixels"])
    wire = work / f"{name}-x86.npz"
    proc = subprocess.run(
        [sys.executable, str(TOOL / "wire_features.py"), str(edge), str(pixels), str(wire)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(wire) as npz:
        x86_wire = {k: npz[k] for k in npz.files if not k.startswith("runtime/")}
    assert sorted(x86_wire) == sorted(RUNTIMES)
    for encoder, got in x86_wire.items():  # what the device compares against is what x86 computes
        assert np.array_equal(got, vectors[f"wire/{encoder}"]), f"{name} {encoder}: vectors differ from x86"
    images, _ = holdout(run_dir, IMAGES)
    pngs = write_pngs(images, work / f"{name}-png")
    infer = subprocess.run(
        _cli(
            "edge",
            "infer",
            edge,
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
    return Exported(name, edge, result.cloud.root, result.edge.version, pngs, x86_wire, labels, served.port)


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
    for option in pi.mux_options:  # ride on the VM's shared ssh connection, as ~/.ssh/config could say
        target += ["--ssh-option", option]
    return subprocess.run(_cli("flash", *args, *target), capture_output=True, text=True, timeout=900)


def _identical_to_x86(verdict: str, bundle: Exported, cpu: str) -> None:
    """The device's acceptance verdict: every encoder ran on its runtime, all values identical to x86's."""
    assert f"acceptance check passed on aarch64 {CPU_NAMES[cpu]}" in verdict, verdict
    assert f"({VECTORS} inputs)" in verdict, verdict
    for encoder, want in bundle.x86_wire.items():
        assert f"{encoder} ({RUNTIMES[encoder]}): {want.size} values identical" in verdict, (
            f"{bundle.name} {encoder} on {cpu}: {verdict}"
        )


class Steps:
    """Wall time of each step of the timed path, and the emulator's CPU time in it (what the step would take
    on an idle host, give or take the host-side part), written as JSON and printed as a table."""

    def __init__(self, cpu: str) -> None:
        self.cpu, self.rows, self.started = cpu, {}, time.monotonic()
        self.load_before = os.getloadavg()
        self.vm = None
        self._t, self._cpu = self.started, 0.0

    def done(self, step: str, wall: float | None = None) -> None:
        now = time.monotonic()
        cpu = self.vm.cpu_seconds() if self.vm is not None else 0.0
        self.rows[step] = {
            "wall_s": round(now - self._t if wall is None else wall, 1),
            "qemu_cpu_s": round(cpu - self._cpu, 1) if cpu >= self._cpu else None,  # None: qemu has exited
        }
        self._t, self._cpu = now, cpu

    def save(self, folder: Path) -> Path:
        from privsplit.results import save_json

        body = {
            "cpu": self.cpu,
            "host_cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in self.load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "steps": self.rows,
            "total_wall_s": round(time.monotonic() - self.started, 1),
            "total_qemu_cpu_s": round(sum(r["qemu_cpu_s"] or 0 for r in self.rows.values()), 1),
        }
        folder.mkdir(parents=True, exist_ok=True)
        path = save_json(folder / f"emulated-pi-{self.cpu}.json", body, version=1, kind="emulated-pi-timings")
        lines = [
            f"emulated Pi {self.cpu} (load {body['load_before'][0]} -> {body['load_after'][0]}): wall s, qemu CPU s"
        ]
        for name, row in [*self.rows.items(), ("total", {"wall_s": body["total_wall_s"],
                                                          "qemu_cpu_s": body["total_qemu_cpu_s"]})]:  # fmt: skip
            cpu = "-" if row["qemu_cpu_s"] is None else f"{row['qemu_cpu_s']:.1f}"
            lines.append(f"  {name:<48} {row['wall_s']:7.1f} {cpu:>7}")
        print("\n" + "\n".join(lines) + f"\n  -> {path}")
        return path


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_the_device_commands_on_an_emulated_pi_match_x86(emulated, cpu, tmp_path):
    from vm import HOST_FROM_GUEST, EmulatedPi, install_privsplit

    image, wheel, keys, exported, _ = emulated
    # both bundles are flashed (and checked bit for bit) on both CPU models, digits first (its release number is
    # older: the other order is a downgrade); the rollback makes digits current. The checks after it run on one
    # release per CPU model: digits (DEVICE/current) on the Pi 4 model, CelebA (DEVICE/releases/V) on the Pi 5's
    first, second = exported["digits"], exported["celeba64"]
    checked = first if cpu == "cortex-a72" else second
    release = f"{DEVICE}/current" if checked is first else f"{DEVICE}/releases/{checked.version}"
    steps = Steps(cpu)
    with EmulatedPi(image, cpu=cpu, workdir=tmp_path / "vm") as pi:
        steps.vm = pi
        steps.done("boot", pi.boot_seconds)
        # the image's venv holds privsplit[edge]'s dependencies (its edge layer): pip resolves them all from the
        # aarch64 wheels, finds them satisfied and installs the project's wheel, as on a Pi set up before
        seconds, installed = install_privsplit(pi, wheel)
        assert installed == ["privsplit"], installed
        steps.done("pip install privsplit[edge]", seconds)

        # flash over SSH: the first bundle (installs the trust root), the second, then roll back (keep 2)
        done = _flash(pi, first.edge, "--trust-key", keys.public, "--keep", "2")
        assert done.returncode == 0, done.stderr
        _identical_to_x86(done.stdout, first, cpu)  # run on the device, over ssh, before current moved
        steps.done(f"flash {first.name} --trust-key (+ check on device)")
        done = _flash(pi, second.edge, "--keep", "2")
        assert done.returncode == 0, done.stderr
        _identical_to_x86(done.stdout, second, cpu)
        steps.done(f"flash {second.name} --keep 2 (+ check on device)")
        back = _flash(pi, "--rollback")
        assert back.returncode == 0 and f"current -> releases/{first.version}" in back.stdout, back.stderr
        assert pi.ssh(f"readlink {DEVICE}/current").stdout.strip() == f"releases/{first.version}"
        steps.done("flash --rollback")

        # infer in the guest against privsplit serve on the host (10.0.2.2 is the host's loopback)
        pi.ssh("mkdir -p /tmp/in")
        pi.put(checked.pngs, "/tmp/in/")
        got = pi.ssh(
            f"privsplit edge infer {release} /tmp/in --server {HOST_FROM_GUEST}:{checked.port} --json",
            step="edge infer in the guest",
        )
        report = json.loads(got.stdout)
        assert report["failed"] == 0
        assert [r["label"] for r in report["results"]] == checked.x86_labels
        steps.done(f"edge infer ({checked.name}, {IMAGES} images)")

        bench = json.loads(
            pi.ssh(
                f"privsplit edge bench {release} --runs 20 --warmup 2 --server {HOST_FROM_GUEST}:{checked.port} "
                "--json /tmp/bench.json >/dev/null && cat /tmp/bench.json",
                step="edge bench in the guest",
            ).stdout
        )
        machine = bench["platform"]
        assert machine["machine"] == "aarch64"
        assert CPU_NAMES[cpu] in machine["cpu"]
        assert machine["emulated"] == f"qemu-system-aarch64:{cpu}" and machine["timings"].startswith("emulated")
        assert bench["runs"] == 20 and bench["p50_ms"] > 0
        steps.done("edge bench --json")
    steps.done("power-off")
    steps.save(Path(os.environ.get(TIMINGS_ENV) or tmp_path))
