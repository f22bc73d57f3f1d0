"""``run_quickstart``: the whole path on one dataset, each stage timed, everything saved for the report.

train (unprotected, protected, curve points) -> feature probes -> purifier -> output probe -> export
(INT8 TFLite + ONNX, signed) -> flash to a device folder -> serve (child process, loopback, free port)
-> edge inference over gRPC on holdout images -> device and cloud latency -> stop -> report.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from privsplit import __version__
from privsplit.errors import ConfigError, RunError
from privsplit.quickstart.config import QUICKSTART_SCHEMA_VERSION, QuickstartConfig
from privsplit.quickstart.service import ServiceProcess
from privsplit.quickstart.stages import StageLog
from privsplit.report.layout import PROTECTED, UNPROTECTED, QuickstartLayout, curve_run_name
from privsplit.results import read_json, save_json
from privsplit.run import noise_note

# The encoder format each device runtime runs in the quickstart's bundle.
_RUNTIME_ENCODER = {"litert": "tflite-int8", "tflite-runtime": "tflite-int8", "onnxruntime": "onnx-int8"}


def _prepare(root: Path, force: bool, resume: QuickstartConfig | None = None) -> None:
    if resume is not None:
        _check_resume(QuickstartLayout(root), resume)
        return
    if root.exists() and any(root.iterdir()):
        if not force:
            raise ConfigError(
                f"{root} exists and is not empty: "
                "choose a new --out, or pass --force to replace a previous quickstart there"
            )
        if not (root / "quickstart.json").is_file():
            raise ConfigError(
                f"{root} is not a quickstart folder (no quickstart.json): refusing to delete it even with --force"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


# Made again on --resume (cheap next to training; the signing key and the bundles go together).
_REMADE_ON_RESUME = ("export", "device", "keys", "measure", "plots")


def _check_resume(layout: QuickstartLayout, config: QuickstartConfig) -> None:
    """``--resume``: the folder must hold a quickstart started with the same options."""
    if not layout.state.is_file():
        raise ConfigError(
            f"--resume: {layout.root} holds no quickstart (no quickstart.json); start one without --resume"
        )
    saved = read_json(layout.state, what="the quickstart state").get("config", {})
    wanted = config.to_json()
    diff = [k for k in sorted(set(saved) | set(wanted)) if k != "progress" and saved.get(k) != wanted.get(k)]
    if diff:
        changes = ", ".join(f"{k} was {saved.get(k)!r}, now {wanted.get(k)!r}" for k in diff[:3])
        raise ConfigError(
            f"--resume: {layout.root} was started with other options ({changes}); resume with the same ones"
        )
    for name in _REMADE_ON_RESUME:
        shutil.rmtree(layout.root / name, ignore_errors=True)


def _run_complete(path: Path) -> bool:
    from privsplit.train.checkpoint import has_checkpoint

    return (path / "metrics.json").is_file() and not has_checkpoint(path)


def _models(config: QuickstartConfig):
    """(run name, TrainConfig) of every model the quickstart trains, least protected first."""
    from privsplit.train import TrainConfig

    epochs = {} if config.epochs is None else {"epochs": config.epochs}
    models = [(UNPROTECTED, TrainConfig.unprotected(**epochs))]
    protected = TrainConfig(**epochs)
    models += [
        (curve_run_name(w), protected.with_(adv_weight=w)) for w in config.curve_weights if w != protected.adv_weight
    ]
    models.append((PROTECTED, protected))
    return models


def run_quickstart(config: QuickstartConfig, *, force: bool = False, resume: bool = False) -> Path:
    """Run every stage into ``config.out`` and build the report; returns the report's HTML path.

    ``resume``: continue an interrupted quickstart in ``config.out`` (same options): trained models and
    their probes are kept, an interrupted training resumes from its epoch checkpoint, and the stages
    from the export on run again."""
    from privsplit.data import load_dataset
    from privsplit.report.build import build_report

    layout = QuickstartLayout(config.out)
    # every data option (spec, folder, task, private, --image-size, --limit) is checked before --out is touched,
    # so a bad option leaves nothing behind that a corrected rerun would refuse
    load_dataset(
        config.data, task=config.task, private=config.private, image_size=config.image_size, limit=config.limit
    )
    _prepare(layout.root, force, config if resume else None)
    models = _models(config)
    state: dict = {
        "schema_version": QUICKSTART_SCHEMA_VERSION,
        "kind": "quickstart",
        "privsplit": __version__,
        "config": config.to_json(),
        "models": [],
        "stages": [],
        "complete": False,
    }

    def save() -> None:
        state["stages"] = [t.to_json() for t in log.times]
        state["total_seconds"] = round(log.elapsed, 3)
        save_json(layout.state, state)

    # train x models, probe, purifier, outputs, export, flash, serve, infer, device latency, cloud latency, stop
    log = StageLog(len(models) + 11, progress=config.progress, on_record=save)
    save()
    log.say(f"{config.data} (task {config.task}, private {config.private}) into {layout.root}")
    _train(config, layout, models, log, state)
    _probe_features(config, layout, models, log)
    _purify(config, layout, log)
    _export_and_flash(config, layout, log)
    _repeated_frames(config, layout, log)
    _serve_and_measure(config, layout, log, state)
    state["complete"] = True
    save()  # final: the report reads only saved results, so `privsplit report` rebuilds the same one
    log.say(f"all {len(log.times)} stages done in {log.elapsed:.0f} s; writing the report")
    paths = build_report(layout.root)
    log.say(f"open {paths.html} ({len(paths.figures)} figures; also {paths.markdown.name} and {paths.summary.name})")
    return paths.html


def _train(config, layout, models, log, state) -> None:
    from privsplit.run import RunFolder
    from privsplit.train import train_run
    from privsplit.train.checkpoint import has_checkpoint

    for name, train_config in models:
        path = layout.run(name)
        with log.stage(f"train {name} model") as st:
            kept = _run_complete(path)
            if kept:
                folder = RunFolder(path)
            else:
                folder = train_run(
                    config.data,
                    path,
                    task=config.task,
                    private=config.private,
                    image_size=config.image_size,
                    limit=config.limit,
                    seed=config.seed,
                    config=train_config,
                    progress=config.progress,
                    resume=has_checkpoint(path),
                )
            task = folder.read_json("metrics.json")["task"]
            noise = noise_note(task.get("noise_sigma"), task.get("noise_seed"))
            st.detail = f"holdout task accuracy {task['accuracy']:.4f} {noise}" + (
                " (kept from the interrupted quickstart)" if kept else ""
            )
        state["models"].append(
            {
                "name": name,
                "run": str(layout.run(name).relative_to(layout.root)),
                "adv_weight": train_config.adv_weight,
                "noise_sigma": train_config.noise_sigma,
                "feature_channels": train_config.feature_channels,
            }
        )


def _feature_spec(config):
    from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec

    # the quickstart's probes (3 models, then every exported format) skip the learning curve's smaller and
    # pooled sets and the gradient-boosting family to stay within its 5 minutes (GBM alone took 26 s on the
    # protected model's features and most of a 219 s probe stage with the unprotected model's 32 channels);
    # `privsplit probe features` and the frontier benchmark run them all
    spec = FeatureProbeSpec(seed=config.seed, curve=(1.0,), pooled=False)
    spec = replace(spec, attackers=tuple(a for a in spec.attackers if a is not AttributeAttacker.GBM))
    return spec.with_epochs(config.probe_epochs) if config.probe_epochs else spec


def _probe_features(config, layout, models, log) -> None:
    from privsplit.probes.feature_probe import probe_run_features

    with log.stage(f"feature-leakage probe of {len(models)} models") as st:
        found = []
        for name, _ in models:
            saved = layout.run(name) / "probe_features.json"
            if saved.is_file():  # kept on --resume
                from privsplit.probes.feature_results import FeatureLeakageResult

                result = FeatureLeakageResult.load(saved)
            else:
                result = probe_run_features(layout.run(name), _feature_spec(config), progress=config.progress)
            found.append(f"{name} {result.attribute.balanced_accuracy:.3f}" if result.attribute else name)
        st.detail = "attribute attacker: " + ", ".join(found)


def _purify(config, layout, log) -> None:
    from privsplit.probes.output_probe import OutputProbeSpec, probe_outputs
    from privsplit.run import RunFolder
    from privsplit.train.purifier import PurifierTrainConfig, train_purifier

    folder = RunFolder(layout.run(PROTECTED)).check()
    kept = folder.has("purifier.json") and folder.has("purifier.safetensors") and folder.has("probe_outputs.json")
    with log.stage("train purifier") as st:
        if not kept:  # else kept from the interrupted quickstart (--resume)
            purifier_config = PurifierTrainConfig(epochs=config.purifier_epochs, seed=config.seed)
            train_purifier(folder, purifier_config, progress=config.progress)
        st.detail = "on the protected model's reference outputs" + (" (kept)" if kept else "")
    with log.stage("output-leakage probe (membership inference, inversion)") as st:
        if kept:
            from privsplit.probes.output_results import OutputProbeResult

            result = OutputProbeResult.load(folder.file("probe_outputs.json"))
        else:
            result = probe_outputs(folder, OutputProbeSpec(seed=config.seed, progress=config.progress))
            result.save(folder.file("probe_outputs.json"))
        st.detail = f"best attack AUC {result.mia.best.auc:.3f} -> {result.mia_purified.best.auc:.3f} with purifier"
        if result.mia_purified.null_best_auc_q95 is not None:
            st.detail += f" (by chance up to {result.mia_purified.null_best_auc_q95:.3f}, 95th percentile)"


def _export_and_flash(config, layout, log) -> None:
    from privsplit.edge.flash import flash
    from privsplit.export.formats import ExportFormat
    from privsplit.export.pipeline import export_run
    from privsplit.export.signing import generate_keys

    with log.stage("export INT8 TFLite + ONNX, signed") as st:
        keys = generate_keys(layout.key_prefix)
        result = export_run(
            layout.run(PROTECTED),
            layout.export,
            formats=(ExportFormat.TFLITE_INT8, ExportFormat.ONNX_INT8),
            calibration=config.calibration,
            sign_key=keys.private,
            seed=config.seed,
            probe_spec=_feature_spec(config),
            probe_formats=(ExportFormat.TFLITE_INT8,),
            overwrite=True,
            progress=config.progress,
        )
        if not result.shipped:
            raise RunError(f"no exported format passed parity; see {result.parity_path}")
        st.detail = f"shipped {', '.join(result.shipped)}"
    with log.stage("flash the edge bundle to a device folder") as st:
        flashed = flash(layout.edge_bundle, str(layout.device), trust_key=layout.public_key)
        layout.measure.mkdir(parents=True, exist_ok=True)
        flashed.save(layout.flash)
        st.detail = f"{flashed.uploaded_bytes / 1024:.0f} KB, signature and hashes verified"


FRAMES = 16  # the repeated-frames stage: the private attribute from the mean of this many copies of each image


def _repeated_frames(config, layout, log) -> None:
    """The private-attribute probe on the shipped TFLite encoder as the device runs it, from one frame and from
    the mean of 16 exact repeats; digits has no identities or other attributes (the report says so)."""
    from privsplit.probes.frames import Frames
    from privsplit.quickstart.bundle_probe import probe_bundle_features
    from privsplit.run import RunFolder

    folder = RunFolder(layout.run(PROTECTED))
    with log.stage(f"repeated frames: the private attribute from 1 and {FRAMES} frames") as st:
        readings = []
        for frames in (Frames(), Frames(FRAMES)):
            result = probe_bundle_features(
                folder,
                layout.export,
                _feature_spec(config),
                encoder="tflite-int8",
                progress=config.progress,
                frames=frames,
            )
            readings.append(result.attribute.balanced_accuracy if result.attribute else float("nan"))
        st.detail = f"best attacker {readings[0]:.3f} from one frame, {readings[1]:.3f} from the mean of {FRAMES}"


def _holdout(config, layout):
    """Up to ``infer_images`` holdout images (uint8) and their task labels, as the device would see them."""
    from privsplit.data import Part
    from privsplit.run import RunFolder

    folder = RunFolder(layout.run(PROTECTED)).check()
    data = folder.dataset()
    index = folder.split()[Part.HOLDOUT][: config.infer_images]
    return data.images[index], data.task_labels[index]


def _serve_and_measure(config, layout, log, state) -> None:
    public_key = layout.public_key
    service = ServiceProcess(layout.cloud_bundle, extra_args=("--trust-key", str(public_key)))
    with log.stage("start the cloud service (privsplit serve, loopback, free port)") as st:
        service.start()
        st.detail = f"listening on {service.target}"
    try:
        wire = _edge_infer(config, layout, log, state, service.target, public_key)
        _device_latency(config, layout, log, service.target, public_key)
        _cloud_latency(config, layout, log, service.target, wire)
    except BaseException:
        service.kill()
        raise
    with log.stage("stop the cloud service (SIGTERM, drain)") as st:
        code = service.stop()
        state["service"] = {"exit_code": code, "log": service.lines[-6:]}
        st.detail = f"exit code {code}"
    if code != 0:
        raise RunError(f"the cloud service exited with code {code} on SIGTERM: {' | '.join(service.lines[-3:])}")


def _edge_infer(config, layout, log, state, target, public_key):
    from privsplit.edge.client import ClientConfig, EdgeClient
    from privsplit.edge.infer import infer_inputs
    from privsplit.edge.pipeline import EdgePipeline

    images, labels = _holdout(config, layout)
    with log.stage(f"edge inference over gRPC on {len(images)} holdout images") as st:
        pipeline = EdgePipeline.open(layout.device / "current", trust_key=public_key, seed=config.seed)
        with EdgeClient(ClientConfig(target=target)) as client:
            report = infer_inputs(pipeline, client, images, batch_size=1)
        report.save(layout.edge_infer)
        ok = np.array([r.ok for r in report.results])
        predicted = np.array([r.label if r.ok else -1 for r in report.results])
        accuracy = float((predicted == labels).mean())
        latency = [r.latency_ms for r in report.results if r.ok]
        state["serving"] = {
            "images": len(images),
            "ok": int(ok.sum()),
            "failed": int((~ok).sum()),
            "accuracy": accuracy,
            "encoder": pipeline.encoder,
            "runtime": pipeline.runtime.name.value,
            "latency_ms_p50": float(np.median(latency)) if latency else None,
            "server": target,
        }
        wire = pipeline.encode_pixels(images[:1])
        pipeline.close()
        if not ok.all():
            raise RunError(
                f"{int((~ok).sum())} of {len(images)} "
                f"edge requests failed: {next(r.error for r in report.results if not r.ok)}"
            )
        st.detail = f"accuracy {accuracy:.3f} through {pipeline.encoder} on {pipeline.runtime.name.value} + server"
    return wire


def _device_latency(config, layout, log, target, public_key) -> None:
    """``privsplit edge bench`` per installed backend, each in its own process as on a device (no torch
    loaded, so peak RSS is the device side's own), with the round trip to the service."""
    import subprocess
    import sys

    from privsplit.edge.latency import BenchResult
    from privsplit.edge.runtimes import available_runtimes

    runtimes = [r.value for r in available_runtimes() if r.value in _RUNTIME_ENCODER]
    with log.stage(f"device latency ({', '.join(runtimes)}; {config.edge_runs} runs each, with round trip)") as st:
        found = []
        for runtime in runtimes:
            out = layout.edge_bench(runtime)
            cmd = [
                sys.executable,
                "-m",
                "privsplit.cli.main",
                "edge",
                "bench",
                str(layout.device / "current"),
                "--runtime",
                runtime,
                "--encoder",
                _RUNTIME_ENCODER[runtime],
                "--runs",
                str(config.edge_runs),
                "--server",
                target,
                "--trust-key",
                str(public_key),
                "--seed",
                str(config.seed),
                "--json",
                str(out),
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise RunError(
                    f"privsplit edge bench --runtime {runtime} did not finish within 600 s: "
                    "run it alone to see where it stalls, or lower --edge-runs"
                ) from None
            if proc.returncode != 0:
                tail = " | ".join(proc.stderr.strip().splitlines()[-2:]) or f"exit status {proc.returncode}"
                raise RunError(f"privsplit edge bench --runtime {runtime} failed: {tail}")
            result = BenchResult.load(out)
            found.append(f"{runtime} p50 {result.p50_ms:.2f} ms, {result.peak_rss_mb:.0f} MB")
        st.detail = ", ".join(found)


def _cloud_latency(config, layout, log, target, wire) -> None:
    from privsplit.cloud.loadgen import LoadSpec, run_load
    from privsplit.proto.wire import features_request

    levels = ", ".join(map(str, config.load_concurrency))
    with log.stage(f"cloud latency and throughput (concurrency {levels}, {config.load_seconds:g} s each)") as st:
        request = features_request(
            wire.data, encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point
        )
        spec = LoadSpec(
            target=target, concurrency=config.load_concurrency, duration_s=config.load_seconds, warmup_s=0.5
        )
        result = run_load(spec, request, label="quickstart cloud")
        result.save(layout.cloud_load)
        errors = sum(p.errors for p in result.points)
        if errors:
            raise RunError(f"{errors} requests to the cloud service failed under load: {result.points[-1].error_codes}")
        st.detail = ", ".join(
            f"c={p.concurrency}: {p.throughput:.0f} req/s, p50 {p.p50_ms:.2f} ms" for p in result.points
        )
