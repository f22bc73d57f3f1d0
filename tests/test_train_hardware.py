"""Training on the user's hardware: device choice, several processes (torchrun + DDP, gloo), --resume,
and what --epochs / --head-epochs mean."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from privsplit.cli.main import main
from privsplit.errors import ConfigError, RunError
from privsplit.run import RunFolder
from privsplit.train import TrainConfig, train_run
from privsplit.train.checkpoint import STOP_ENV, TrainingStopped, has_checkpoint
from privsplit.train.device import BatchFeeder, DevicePolicy, resolve_device

RUN_FILES = {"config.json", "split.json", "encoder.safetensors", "head.safetensors", "metrics.json"}
# protected (adversaries, noise) on digits' slant: 2 joint epochs + 1 head epoch, 600 images
SMALL = dict(limit=600, seed=5, private="slant", config=TrainConfig(epochs=2, head_finetune_epochs=1), progress=False)


def _weights(run: RunFolder) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {**load_file(str(run.file("encoder.safetensors"))), **load_file(str(run.file("head.safetensors")))}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_device_choice_here_is_the_cpu(capsys, tmp_path):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert DevicePolicy.for_device(torch.device("cpu")).precision.value == "float32"  # the CPU is the reference
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--data", "digits", "--out", str(tmp_path / "r"), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no CUDA GPU" in err[0] and "--device cpu" in err[0]
    assert not (tmp_path / "r").exists()


def test_batch_feeder_matches_the_model_preprocessing():
    from privsplit.data import load_dataset
    from privsplit.models import Arch, ModelConfig, build_split_model

    data = load_dataset("digits", task="digit", private=None, image_size=None, limit=50)
    model = build_split_model(ModelConfig(Arch.SMALL_CNN, 1, 32, 10, 2, mean=(0.3,), std=(0.2,)))
    feeder = BatchFeeder(data.images, model.mean.flatten(), model.std.flatten(), DevicePolicy(torch.device("cpu")))
    index = np.array([7, 3, 41])
    assert torch.equal(feeder.gather(index), model.preprocess(data.images[index]))
    streamed = list(feeder.stream([index, index[:2]]))
    assert [len(i) for i, _ in streamed] == [3, 2]
    assert torch.equal(streamed[1][1], model.preprocess(data.images[index[:2]]))
    assert torch.equal(feeder.pixels(index), torch.as_tensor(data.images[index]).permute(0, 3, 1, 2).float() / 255)


def test_epochs_mean_what_they_say_and_logs_name_each_loss(tmp_path):
    """--epochs 2 trains 2 epochs (the head fine-tune has its own --head-epochs); the printed task CE is the
    cross-entropy alone, not the total with the adversary terms."""
    out = tmp_path / "r"
    proc = _cli(
        "train",
        "--data",
        "digits",
        "--private",
        "slant",
        "--limit",
        "500",
        "--epochs",
        "2",
        "--head-epochs",
        "0",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    history = RunFolder(out).read_json("metrics.json")["history"]
    assert [(h["epoch"], h["phase"]) for h in history] == [(1, "joint"), (2, "joint")]
    for h in history:
        assert 0 < h["task_loss"] < 2.5  # 10 classes: CE starts near ln 10 = 2.3
        assert h["total_loss"] == pytest.approx(h["task_loss"] + h["privacy_loss"])
        assert h["privacy_loss"] > 1.0  # 3 x entropy terms of 2 adversaries on 2 classes
    lines = [ln for ln in proc.stderr.splitlines() if "joint epoch" in ln]
    assert len(lines) == 2 and all("task CE" in ln and "privacy term" in ln and "total loss" in ln for ln in lines)
    assert "adversary CE" in lines[0]
    assert not has_checkpoint(out)  # removed once the run completed
    assert {p.name for p in out.iterdir()} == RUN_FILES

    from privsplit.cli.main import build_parser
    from privsplit.cli.train import build_config

    args = build_parser().parse_args(["train", "--data", "digits", "--out", "x", "--epochs", "3"])
    assert build_config(args).head_finetune_epochs == 5  # the default stays
    args = build_parser().parse_args(["train", "--data", "digits", "--out", "x", "--epochs", "3", "--head-epochs", "2"])
    assert (build_config(args).epochs, build_config(args).head_finetune_epochs) == (3, 2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train_run("digits", tmp_path_factory.mktemp("full") / "run", **SMALL)


@pytest.mark.parametrize("stop_after", [1, 2])  # inside the joint epochs; at the switch to the head fine-tune
def test_resume_gives_the_uninterrupted_result(uninterrupted, tmp_path, monkeypatch, stop_after):
    out = tmp_path / "run"
    monkeypatch.setenv(STOP_ENV, str(stop_after))
    with pytest.raises(TrainingStopped, match="--resume"):
        train_run("digits", out, **SMALL)
    assert has_checkpoint(out) and not (out / "metrics.json").exists()
    monkeypatch.delenv(STOP_ENV)
    with pytest.raises(ConfigError, match="--resume"):  # never silently restarted over a checkpoint
        train_run("digits", out, **SMALL)
    resumed = train_run("digits", out, resume=True, **SMALL)
    a, b = _weights(uninterrupted), _weights(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ma, mb = uninterrupted.read_json("metrics.json"), resumed.read_json("metrics.json")
    assert ma["task"] == mb["task"] and ma["history"] == mb["history"] and ma["selected_epoch"] == mb["selected_epoch"]
    assert not has_checkpoint(out)


def test_resume_errors_are_one_line(uninterrupted, tmp_path, monkeypatch, capsys):
    with pytest.raises(RunError, match="no checkpoint .*completed"):
        train_run("digits", uninterrupted.path, resume=True, **SMALL)
    out = tmp_path / "run"
    monkeypatch.setenv(STOP_ENV, "1")
    with pytest.raises(TrainingStopped):
        train_run("digits", out, **SMALL)
    monkeypatch.delenv(STOP_ENV)
    code = main(
        [
            "train",
            "--data",
            "digits",
            "--private",
            "slant",
            "--limit",
            "600",
            "--seed",
            "6",
            "--epochs",
            "2",
            "--head-epochs",
            "1",
            "--out",
            str(out),
            "--resume",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other options" in err[0] and "seed was 5, now 6" in err[0]
    code = main(["train", "--data", "digits", "--out", str(tmp_path / "none"), "--resume", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no checkpoint" in err[0]


def test_two_processes_train_one_model_with_ddp(tmp_path):
    """torchrun, 2 gloo processes, digits, 2 epochs: both ranks end with identical weights; only rank 0 writes."""
    out, digests = tmp_path / "run", tmp_path / "digests"
    proc = _cli(
        "train",
        "--data",
        "digits",
        "--private",
        "slant",
        "--epochs",
        "2",
        "--head-epochs",
        "0",
        "--nproc",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        env={"PRIVSPLIT_WEIGHT_DIGESTS": str(digests)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 processes" in proc.stderr and "Traceback" not in proc.stderr
    ranks = {p.name: p.read_text() for p in digests.iterdir()}
    assert set(ranks) == {"rank0.sha256", "rank1.sha256"} and ranks["rank0.sha256"] == ranks["rank1.sha256"]
    assert {p.name for p in out.iterdir()} == RUN_FILES
    metrics = RunFolder(out).read_json("metrics.json")
    assert metrics["processes"] == 2 and len(metrics["history"]) == 2
    assert proc.stdout.count('"run"') == 1  # one report, from rank 0
    assert metrics["task"]["accuracy"] > 0.5  # 10 classes, 2 protected epochs


def test_ranks_draw_their_own_channel_noise_and_one_process_keeps_its_stream():
    from privsplit.train.distributed import DistContext
    from privsplit.train.loop import _rank_stream, _reseed

    def draw(dist: DistContext) -> torch.Tensor:
        _reseed(3, 7)
        _rank_stream(3, 7, dist)
        return torch.randn(64)

    _reseed(3, 7)
    epoch_stream = torch.randn(64)
    assert torch.equal(draw(DistContext()), epoch_stream)  # one process: unchanged, old runs reproduce bit for bit
    rank0, rank1 = draw(DistContext(rank=0, world=2)), draw(DistContext(rank=1, world=2))
    # two shards of one global batch must not share their noise; each rank's stream is reproducible (resume)
    assert not torch.equal(rank0, rank1) and abs(float(torch.corrcoef(torch.stack([rank0, rank1]))[0, 1])) < 0.5
    assert torch.equal(rank1, draw(DistContext(rank=1, world=2)))


def test_nproc_failure_is_one_line(tmp_path):
    out = str(tmp_path / "r")
    proc = _cli("train", "--data", "digits", "--private", "nope", "--nproc", "2", "--device", "cpu", "--out", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "2-process training failed" in lines[0] and "unknown private attribute 'nope'" in lines[0]


def test_quickstart_resume_continues_the_interrupted_training(tmp_path):
    """Interrupted in its first training, a quickstart resumes that run from its checkpoint (not from scratch);
    resuming with other options or without a quickstart there is a one-line error."""
    out = str(tmp_path / "qs")
    common = ("quickstart", "--smallest", "--epochs", "2", "--limit", "500", "--out", out)
    proc = _cli(*common, env={STOP_ENV: "1"})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 75 and last.endswith(f"--resume --out {out}/runs/unprotected"), proc.stderr[-2000:]
    assert has_checkpoint(f"{out}/runs/unprotected")
    proc = _cli(*common, "--resume", "--seed", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "seed was 0, now 1" in lines[0]
    proc = _cli("quickstart", "--out", str(tmp_path / "none"), "--resume")
    assert proc.returncode == 2 and "holds no quickstart" in proc.stderr and proc.stderr.count("\n") == 1
    # resume, stopping again after the protected model's first epoch (the unprotected one then completes)
    proc = _cli(*common, "--resume", "--quiet", env={STOP_ENV: "1"})
    assert proc.returncode == 75, proc.stderr
    unprotected = RunFolder(f"{out}/runs/unprotected").read_json("metrics.json")
    assert [h["epoch"] for h in unprotected["history"]] == [1, 2] and not has_checkpoint(f"{out}/runs/unprotected")
    assert has_checkpoint(f"{out}/runs/protected") and not RunFolder(f"{out}/runs/protected").has("metrics.json")


# ---- the probes and the purifier on a device ------------------------------------------------------------------
PROBE_COMMANDS = {
    "train-purifier": ["train-purifier", "{run}", "--mode", "adversarial", "--epochs", "3", "--quiet"],
    "probe features": ["probe", "features", "{run}", "--epochs", "2"],
    "probe outputs": ["probe", "outputs", "{run}"],
}
PROBE_FILES = ("purifier.json", "probe_features.json", "probe_outputs.json")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> RunFolder:
    """Digits at 8 px with the slant as private attribute, 300 images, 2 epochs: every probe has enough of each part."""
    out = tmp_path_factory.mktemp("probe-device") / "run"
    config = TrainConfig.unprotected(epochs=2)
    return train_run("digits", out, limit=300, image_size=8, private="slant", seed=0, config=config, progress=False)


def _copy(run: RunFolder, dest) -> RunFolder:
    import shutil

    shutil.copytree(run.path, dest)
    return RunFolder(dest)


def _run_probes(run: RunFolder, *extra: str) -> None:
    """The purifier, then both probes, as the CLI runs them (in this process)."""
    for argv in PROBE_COMMANDS.values():
        assert main([a.format(run=run.path) for a in argv] + list(extra)) == 0


@pytest.mark.parametrize("command", sorted(PROBE_COMMANDS))
def test_probe_and_purifier_device_errors_are_one_line(tiny_run, tmp_path, capsys, command):
    """--device cuda where there is no GPU: one line naming the fix, the exit code of a bad option, nothing written."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = _copy(tiny_run, tmp_path / "run")
    before = {p.name for p in run.path.iterdir()}
    code = main([a.format(run=run.path) for a in PROBE_COMMANDS[command]] + ["--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ConfigError.exit_code and len(err) == 1, err
    assert "no CUDA GPU" in err[0] and "--device cpu" in err[0]
    assert {p.name for p in run.path.iterdir()} == before


@pytest.mark.parametrize("command", sorted(PROBE_COMMANDS))
def test_probe_and_purifier_help_lists_the_device(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main(command.split() + ["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--device {auto,cpu,cuda,mps}" in text and "(default cpu: the CPU gives the reference figures" in text


def _same_results(a: RunFolder, b: RunFolder) -> None:
    import json

    def figures(run: RunFolder, name: str) -> dict:
        data = json.loads(run.file(name).read_text())
        return {k: v for k, v in data.items() if k not in ("runtime_s", "run")}  # the time taken; the folder's path

    for name in PROBE_FILES:
        assert figures(a, name) == figures(b, name), name
    assert a.file("purifier.safetensors").read_bytes() == b.file("purifier.safetensors").read_bytes()
    for name in ("probe_outputs.npz", "probe_features.samples.npz"):
        with np.load(a.file(name)) as za, np.load(b.file(name)) as zb:
            assert set(za.files) == set(zb.files)
            for key in za.files:
                assert np.array_equal(za[key], zb[key]), (name, key)


@pytest.mark.slow
def test_device_cpu_is_the_default_bit_for_bit(tiny_run, tmp_path):
    """--device cpu and no --device give the same purifier weights and the same probe figures, to the bit; every
    result records where it ran."""
    import json

    from privsplit.probes.feature_probe import FeatureLeakageResult
    from privsplit.probes.output_probe import OutputProbeResult

    default, cpu = _copy(tiny_run, tmp_path / "default"), _copy(tiny_run, tmp_path / "cpu")
    _run_probes(default)
    _run_probes(cpu, "--device", "cpu")
    _same_results(default, cpu)
    assert json.loads(cpu.file("purifier.json").read_text())["training"]["device"] == "cpu"
    assert FeatureLeakageResult.load(cpu.path).device == "cpu"
    assert OutputProbeResult.load(cpu.file("probe_outputs.json")).device == "cpu"
    # the figures are real: the purifier keeps every label, the probes measured something
    outputs = json.loads(cpu.file("probe_outputs.json").read_text())
    assert outputs["label_agreement"] == 1.0 and 0.5 < outputs["accuracy"] <= 1.0
    features = json.loads(cpu.file("probe_features.json").read_text())
    families = {key.split("@")[0] for key in features["attribute"]["attackers"]}
    assert {"logistic", "mlp", "cnn"} <= families


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_probes_on_cuda_agree_with_the_cpu(tiny_run, tmp_path):
    """On a GPU the same commands run there, record it, and agree with the CPU reference within noise."""
    import json

    cpu, gpu = _copy(tiny_run, tmp_path / "cpu"), _copy(tiny_run, tmp_path / "gpu")
    _run_probes(cpu)
    _run_probes(gpu, "--device", "cuda")
    a = {name: json.loads(cpu.file(name).read_text()) for name in PROBE_FILES}
    b = {name: json.loads(gpu.file(name).read_text()) for name in PROBE_FILES}
    assert b["purifier.json"]["training"]["device"].startswith("cuda")
    assert b["probe_features.json"]["device"].startswith("cuda") and b["probe_outputs.json"]["device"].startswith(
        "cuda"
    )
    # the same model scores the same images with the same (CPU-drawn) noise: float32 on both
    assert b["probe_features.json"]["task"]["accuracy"] == pytest.approx(
        a["probe_features.json"]["task"]["accuracy"], abs=0.03
    )
    assert b["probe_outputs.json"]["accuracy"] == pytest.approx(a["probe_outputs.json"]["accuracy"], abs=0.03)
    assert b["probe_outputs.json"]["label_agreement"] == 1.0
    assert b["purifier.json"]["training"]["log_clamp"] == pytest.approx(
        a["purifier.json"]["training"]["log_clamp"], rel=0.5
    )
