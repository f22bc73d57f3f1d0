"""What a new user trips over (issue 16) and quiet output (issue 15 item 6), through the real CLI.

Damaged run and bundle files end in one line and a documented exit code, never a traceback; the
quickstart checks its options before writing; train, probe and export print one holdout accuracy
with its channel noise; ``--quiet`` export prints no third-party start-up noise; ``folder:`` names
its file column; the split profile is measured after warm-up with medians.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NOISE = ("Failed to load", "torchao", "is an Enum subclass", "oneDNN", "absl::InitializeLog", "XNNPACK", "I0000")


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PRIVSPLIT_PROGRESS": "0"},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """400 of scikit-learn's digits as PNGs with labels.csv ``file,digit,parity`` (parity: fixed by the digit)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits-folder")
    digits = load_digits()
    rows = ["file,digit,parity"]
    for i in range(400):
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((16, 16)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{digits.target[i]},{'even' if digits.target[i] % 2 == 0 else 'odd'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def noisy_run(digits_folder, tmp_path_factory) -> dict:
    """A protected run (channel noise σ=1) trained, probed and exported through the CLI, with its outputs."""
    root = tmp_path_factory.mktemp("ux")
    run, out = root / "run", root / "export"
    train = cli(
        "train",
        "--data",
        f"folder:{digits_folder}",
        "--task",
        "digit",
        "--private",
        "parity",
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--out",
        run,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    probe = cli("probe", "features", run, "--epochs", "1")
    assert probe.returncode == 0, probe.stderr[-3000:]
    # 80 holdout images: one flipped answer is 1.25 points, so the tolerance is wide (parity is test_export's business)
    export = cli(
        "export", run, "--out", out, "--formats", "onnx-fp32,tflite-int8", "--no-probe", "--quiet", "--tolerance", "0.2"
    )
    assert export.returncode == 0, export.stderr[-3000:]
    return {"run": run, "out": out, "train": train, "probe": probe, "export": export}


# ---- item 2: damaged files --------------------------------------------------------------------
def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(1000)


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header
    path.write_bytes(bytes(data))


DAMAGE = {
    "encoder.safetensors truncated": ("encoder.safetensors", _truncate),
    "head.safetensors corrupt header": ("head.safetensors", _corrupt_header),
    "config.json truncated": ("config.json", lambda p: p.write_text(p.read_text()[:60])),
    "config.json lacks data": ("config.json", lambda p: p.write_text(json.dumps({"schema_version": 1, "seed": 0}))),
    "config.json wrong types": (
        "config.json",
        lambda p: p.write_text(json.dumps({"schema_version": 1, "data": 3, "model": [], "seed": 0})),
    ),
    "split.json not JSON": ("split.json", lambda p: p.write_text("[1, 2")),
    "split.json lacks fields": ("split.json", lambda p: p.write_text(json.dumps({"schema_version": 1}))),
    "metrics.json not UTF-8": ("metrics.json", lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "metrics.json a list": ("metrics.json", lambda p: p.write_text("[]")),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_file_is_one_line_and_exit_2(case, digits_run, tmp_path):
    name, damage = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    damage(run / name)
    line = assert_one_line_error(cli("probe", "features", run, "--epochs", "1"), 2, str(run / name), "damaged")
    assert "re-train" in line
    if name in ("encoder.safetensors", "metrics.json"):  # export reads them too
        assert_one_line_error(cli("export", run, "--out", tmp_path / "x", "--no-probe"), 2, str(run / name), "damaged")


def test_a_damaged_bundle_manifest_is_one_line_and_exit_3(noisy_run, tmp_path):
    edge = tmp_path / "edge"
    shutil.copytree(noisy_run["out"] / "edge", edge)
    manifest = json.loads((edge / "manifest.json").read_text())
    manifest["features"] = {"shape": [4, 2, 2]}  # scale, zero point and sigma gone
    (edge / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(cli("edge", "bench", edge, "--runs", "1"), 3, "manifest.json is damaged", "re-export")
    manifest["encoders"] = ["not", "an", "object"]
    (edge / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(cli("edge", "bench", edge, "--runs", "1"), 3, "manifest.json")
    (edge / "manifest.json").write_text(json.dumps(manifest)[:200])
    assert_one_line_error(cli("edge", "bench", edge, "--runs", "1"), 3, "manifest.json", "re-export")


# ---- item 3: quickstart validates before writing ----------------------------------------------
@pytest.mark.parametrize("options", [("--image-size", "3"), ("--task", "digit", "--private", "nope"), ("--limit", "2")])
def test_quickstart_checks_options_before_writing_into_out(options, tmp_path):
    out = tmp_path / "qs"
    assert_one_line_error(cli("quickstart", *options, "--out", out, "--quiet"), 2)
    assert not out.exists()  # so the corrected rerun is not refused as "exists and is not empty"


# ---- item 5: one holdout accuracy ---------------------------------------------------------------
def test_train_probe_and_export_print_the_same_holdout_accuracy_with_its_noise(noisy_run):
    metrics = json.loads((noisy_run["run"] / "metrics.json").read_text())["task"]
    assert metrics["noise_sigma"] == 1.0 and metrics["noise_seed"] == 11
    accuracy = f"{metrics['accuracy']:.4f}"
    note = "(with channel noise σ=1, noise seed 11)"
    train_line = next(line for line in noisy_run["train"].stderr.splitlines() if "holdout accuracy" in line)
    assert f"holdout accuracy {accuracy} {note}" in train_line
    probe_line = next(line for line in noisy_run["probe"].stdout.splitlines() if line.startswith("task accuracy"))
    assert probe_line == f"task accuracy (holdout): {accuracy} {note}"
    parity = json.loads((noisy_run["out"] / "parity.json").read_text())
    assert parity["holdout_size"] == 80 and parity["noise_seed"] == 11
    assert parity["reference"]["task_accuracy"] == pytest.approx(metrics["accuracy"])
    export_out = noisy_run["export"].stdout
    assert note in export_out.splitlines()[0]
    assert re.search(rf"^pytorch\s+{re.escape(accuracy)}\s", export_out, re.M), export_out  # a fraction, like train's


# ---- item 6 (and issue 15.6): quiet ---------------------------------------------------------------
def test_quiet_export_prints_no_third_party_startup_noise(noisy_run):
    export = noisy_run["export"]
    for noise in NOISE:
        assert noise not in export.stderr and noise not in export.stdout, (noise, export.stderr[-2000:])
    # only privsplit's own lines remain (here: the calibration set is smaller than asked, a real warning)
    assert all(line.startswith("privsplit export: ") for line in export.stderr.splitlines() if line.strip())


def test_the_native_stderr_filter_drops_only_the_xnnpack_line(capfd):
    from privsplit.quiet import drop_native_stderr

    with drop_native_stderr():
        os.write(2, b"kept before\n")
        os.write(2, b"INFO: Created TensorFlow Lite ")
        time.sleep(0.05)
        os.write(2, b"XNNPACK delegate for CPU.\n")
        os.write(2, b"WARNING: a real warning\n")
    assert capfd.readouterr().err == "kept before\nWARNING: a real warning\n"


def test_log_filters_drop_only_the_known_notices(caplog):
    import logging

    from privsplit.quiet import silence_startup_noise

    silence_startup_noise()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load this library: /x")
        logging.getLogger("torchao").warning("a real torchao warning")
        logging.getLogger("torch.utils._pytree").warning(
            "<enum 'K'> is an Enum subclass and is now natively supported by torch.compile as an opaque value type."
        )
    assert [r.getMessage() for r in caplog.records] == ["a real torchao warning"]


# ---- item 7: folder file column -----------------------------------------------------------------
def test_folder_error_names_the_column_taken_as_file_names(digits_folder, tmp_path):
    from privsplit.data import load_dataset
    from privsplit.errors import DataError

    root = tmp_path / "f"
    shutil.copytree(digits_folder, root)
    lines = (root / "labels.csv").read_text().splitlines()
    rows = [",".join([d, p, f]) for f, d, p in (line.split(",") for line in lines[1:])]
    (root / "labels.csv").write_text("\n".join(["digit,parity,path", *rows]) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(f"folder:{root}", task="parity")
    message = str(err.value)
    assert "column 'digit'" in message and "file column" in message and "named 'file'" in message
    assert "400 of 400" in message
    guide = (REPO / "docs" / "guides" / "train.md").read_text()
    assert "the column named `file`, `filename` or `image`" in guide


# ---- item 9: messages -----------------------------------------------------------------------------
def test_tflite_runtime_not_installed_is_not_blamed_on_numpy():
    import importlib.util

    from privsplit.edge.runtimes import RuntimeName, import_backend
    from privsplit.errors import MissingDependencyError

    if importlib.util.find_spec("tflite_runtime") is not None:
        pytest.skip("tflite-runtime is installed here")
    with pytest.raises(MissingDependencyError) as err:
        import_backend(RuntimeName.TFLITE_RUNTIME)
    assert "not installed" in str(err.value) and "numpy 2" not in str(err.value)


def test_probe_outputs_help_has_a_description():
    proc = cli("probe", "outputs", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "membership inference" in text and "model inversion" in text and "purifier" in text


def test_a_private_attribute_fixed_by_the_task_gets_a_warning(noisy_run):
    out = noisy_run["probe"].stdout
    assert re.search(r"task floor \(from the true task label alone\)\s+1\.000", out), out
    assert "warning: the task label alone determines parity (task floor 1.000)" in out


# ---- item 10: split profile ---------------------------------------------------------------------
def test_split_latency_is_a_median_after_warm_up_interleaved():
    from privsplit.probes.split_profile import SplitProfileSpec, median_latencies_ms

    calls = {"cold": 0}

    def cold_start():  # slow for its first 8 calls (lazy initialisation), then fast
        calls["cold"] += 1
        time.sleep(0.02 if calls["cold"] <= 8 else 0.0005)

    def steady():
        time.sleep(0.003)

    cold_ms, steady_ms = median_latencies_ms([cold_start, steady], warmup=10, runs=20)
    assert calls["cold"] == 30
    assert cold_ms < steady_ms  # the cold start does not reach the figure
    spec = SplitProfileSpec()
    assert spec.warmup == 10 and spec.runs == 100
