"""``export_run``: a run folder in; signed edge and cloud bundles and ``parity.json`` out.

OUT/edge/      encoder artefacts that passed parity + manifest.json (+ manifest.sig)
OUT/cloud/     server.onnx, purifier.onnx (when the run has one) + manifest.json (+ manifest.sig)
OUT/parity.json   the parity report (every requested format, shipped or not)
OUT/rejected/  artefacts that failed parity, kept for inspection (never in a bundle)
OUT/triton/    with ``triton=True``: a Triton model repository of the cloud bundle (:mod:`privsplit.export.triton`)

Everything is built in a staging folder ``OUT/.export-staging-*`` and moved into place only at the end (the
previous export first moved aside, then removed): a re-export (``--force``) that fails leaves the previous
bundles as they were. A re-export where no format passes parity writes its report to OUT/parity-failed.json.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from privsplit.bundle import (
    ENDORSEMENTS,
    Bundle,
    BundleKind,
    Endorsement,
    FeatureSpec,
    PreprocessSpec,
    load_bundle,
    sha256_file,
)
from privsplit.errors import ConfigError, ExportError, PrivsplitError
from privsplit.export import measure
from privsplit.export.artefacts import EncoderFactory, check_purifier_parity, load_run_purifier, make_cloud
from privsplit.export.bundle_writer import default_release, write_bundle
from privsplit.export.calibration import calibration_set, wire_quantization
from privsplit.export.formats import ALL_FORMATS, DEFAULT_PREFERENCE, ExportFormat
from privsplit.export.gate import GateBudget, measure_gate, refusal
from privsplit.export.parity import FormatParity, ParityReport, TorchReference
from privsplit.export.reference_vectors import DEFAULT_COUNT as DEFAULT_REFERENCE_COUNT
from privsplit.export.reference_vectors import VECTORS_KEY, write_reference_vectors
from privsplit.export.triton import TritonRepository, check_model_name, write_triton_repository
from privsplit.export.triton_config import model_config_pb2
from privsplit.leakage_gate import DEFAULT_MAX_EXCESS, MANIFEST_KEY
from privsplit.noise_keying import NoiseKeying
from privsplit.proto.wire import DEFAULT_MODEL_NAME
from privsplit.run import RunFolder, noise_note


@dataclass(frozen=True)
class ExportResult:
    out: Path
    parity: ParityReport
    edge: Bundle
    cloud: Bundle
    default_encoder: str
    triton: TritonRepository | None = None

    @property
    def shipped(self) -> tuple[str, ...]:
        return tuple(self.edge.manifest["encoders"])

    @property
    def parity_path(self) -> Path:
        return self.out / "parity.json"


def _log(msg: str, enabled: bool) -> None:
    if enabled:
        print(f"privsplit export: {msg}", file=sys.stderr, flush=True)


OUTPUTS = ("edge", "cloud", "parity.json", "rejected", "triton")
FAILED_PARITY = "parity-failed.json"


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Refuse an existing export unless ``overwrite``; return a fresh staging folder inside ``out``."""
    taken = [out / n for n in OUTPUTS if (out / n).exists()]
    if taken and not overwrite:
        raise ConfigError(f"{taken[0]} already exists: choose another --out or pass --force to replace the export")
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".export-staging-", dir=out))


def _swap_in(stage: Path, out: Path) -> None:
    """Move the staged export into ``out``: the previous one aside first, back again if a move fails."""
    previous = Path(tempfile.mkdtemp(prefix=".export-previous-", dir=out))
    staged = [n for n in OUTPUTS if (stage / n).exists()]
    moved_aside, moved_in = [], []
    try:
        for name in OUTPUTS:
            if (out / name).exists():
                (out / name).rename(previous / name)
                moved_aside.append(name)
        for name in staged:
            (stage / name).rename(out / name)
            moved_in.append(name)
    except OSError as exc:
        for name in moved_in:
            (out / name).rename(stage / name)
        for name in moved_aside:
            (previous / name).rename(out / name)
        raise ExportError(
            f"moving the new export into {out} failed ({exc}); the previous export is unchanged"
        ) from None
    (out / FAILED_PARITY).unlink(missing_ok=True)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def _format_row(fmt, factory, holdout, wire, server_session, shape, progress):
    """``(row, artefact or None, its noise-free holdout outputs or None)``."""
    started = time.perf_counter()
    try:
        path = factory.make(fmt)
        art = factory.open_checked(fmt, path, shape)
    except ExportError as exc:
        return FormatParity(fmt.value, False, str(exc), seconds=time.perf_counter() - started), None, None
    except Exception as exc:  # a converter crash fails this format only; the reason is reported
        return FormatParity(fmt.value, False, f"conversion failed: {type(exc).__name__}: {exc}"[:500]), None, None
    feats = art.encode(holdout.unit)
    error = measure.feature_error(holdout.features, feats)
    acc = measure.server_accuracy(server_session, measure.through_wire(feats, holdout.noise, wire), holdout.labels)
    row = FormatParity(
        fmt.value,
        True,
        "",
        size_bytes=path.stat().st_size,
        task_accuracy=acc,
        task_accuracy_torch=holdout.torch_accuracy,
        input=art.input.to_json(),
        output=art.output.to_json(),
        seconds=round(time.perf_counter() - started, 2),
        **error,
    )
    _log(
        f"{fmt.value}: {row.size_bytes / 1024:.1f} KB, cosine {row.cosine:.5f}, accuracy {100 * acc:.2f} % "
        f"(torch {100 * holdout.torch_accuracy:.2f} %)",
        progress,
    )
    return row, art, feats


def judge(row: FormatParity, tolerance: float, sizes: dict[str, int]) -> FormatParity:
    """Fill the size ratio and fail the row when its accuracy drop exceeds ``tolerance`` (or is not finite)."""
    if row.size_bytes is None:
        return row
    ref = sizes.get(ExportFormat(row.format).float_reference.value)
    row = replace(row, size_ratio=None if not ref else round(row.size_bytes / ref, 4))
    if not np.isfinite(row.max_abs_err) or not np.isfinite(row.task_accuracy):
        return replace(row, passed=False, reason="non-finite features or accuracy")
    drop = row.accuracy_drop
    if drop > tolerance + 1e-12:
        return replace(
            row,
            passed=False,
            reason=(
                f"task accuracy {100 * row.task_accuracy:.2f} % is {100 * drop:.2f} points below PyTorch's "
                f"{100 * row.task_accuracy_torch:.2f} % (tolerance {100 * tolerance:.2f})"
            ),
        )
    return row


def export_run(
    run: str | Path | RunFolder,
    out: str | Path,
    *,
    formats: tuple[ExportFormat, ...] = ALL_FORMATS,
    calibration: int = 256,
    sign_key: str | Path | None = None,
    tolerance: float = 0.01,
    seed: int = 0,
    probe_spec=None,
    probe_formats: tuple[ExportFormat, ...] | None = None,
    holdout_limit: int | None = None,
    version: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    triton: bool = False,
    triton_model_name: str = DEFAULT_MODEL_NAME,
    ship_collapsed: bool = False,
    release: int | None = None,
    endorsements: tuple[str | Path, ...] = (),
    max_excess: float | None = DEFAULT_MAX_EXCESS,
    gate_budget: GateBudget = GateBudget(),
    noise_keying: NoiseKeying = NoiseKeying.FRAME,
    reference_count: int = DEFAULT_REFERENCE_COUNT,
) -> ExportResult:
    """Convert, measure, judge and bundle. ``probe_spec`` (a ``FeatureProbeSpec``) runs the feature
    leakage probe on PyTorch's and each artefact's wire features (``probe_formats``: which; None = all);
    None skips it. ``tolerance``: the largest task-accuracy drop a shipped format may have (0.01 = 1 point).
    ``triton``: also write OUT/triton, a Triton model repository whose ensemble is ``triton_model_name``.
    ``ship_collapsed``: export a run whose protected training collapsed (refused otherwise).
    ``release``: the bundles' anti-rollback number (default: the Unix time). ``endorsements``: key endorsement
    files (``privsplit keys endorse``) shipped in the edge bundle, so devices rooted in an older key rotate to
    ``sign_key``. The cloud bundle lists the sha256 of the edge manifest (``accepted_manifest_hashes``).
    ``max_excess``: the leakage gate (:mod:`privsplit.export.gate`): with the probe on, refuse to ship when any
    measured excess (private attribute, linkage, every other attribute; one frame and the mean of 16) is above
    it; None turns the gate off. The record goes to the parity report and both manifests.
    ``noise_keying``: how devices seed the channel noise (:mod:`privsplit.noise_keying`), in the manifest.
    ``reference_count``: holdout inputs in the on-device acceptance check's reference vectors.
    """
    from privsplit.export.signing import load_private_key
    from privsplit.models import feature_shape

    if not formats:
        raise ConfigError("no formats to export")
    if triton:
        check_model_name(triton_model_name)
        model_config_pb2()  # tritonclient installed? (before minutes of conversion, not after)
    if calibration < 1:
        raise ConfigError(f"--calibration must be >= 1, got {calibration}")
    if max_excess is not None and (
        isinstance(max_excess, bool) or not isinstance(max_excess, int | float) or not 0 <= max_excess < float("inf")
    ):
        raise ConfigError(f"--max-excess must be a finite number >= 0 or 'off', got {max_excess!r}")
    if reference_count < 1:
        raise ConfigError(f"reference_count must be >= 1, got {reference_count}")
    if not 0 <= tolerance < 1:
        raise ConfigError(f"tolerance is a fraction of accuracy in [0, 1), got {tolerance}")
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    collapsed = run.collapse_reason()
    if collapsed and not ship_collapsed:
        raise ConfigError(
            f"{run.path}'s protected training collapsed ({collapsed}): export refuses to ship it; retrain "
            "(e.g. --privacy balanced or another --seed), or pass --force to export it anyway"
        )
    out = Path(out)
    key = None if sign_key is None else load_private_key(sign_key)
    endorsed = _endorsement_chain(endorsements, key)
    if release is not None and (isinstance(release, bool) or not isinstance(release, int) or release < 0):
        raise ConfigError(f"--release must be an integer >= 0, got {release!r}")
    release = default_release() if release is None else release
    model = run.load_split_model()
    cfg = model.config
    data, split = run.dataset(), run.split()
    noise_seed = run.eval_noise_seed()  # read (and checked) before anything is written
    shape = feature_shape(cfg)
    stage = _prepare_out(out, overwrite)
    try:
        result = _export(
            run,
            stage,
            out,
            model=model,
            cfg=cfg,
            data=data,
            split=split,
            noise_seed=noise_seed,
            shape=shape,
            key=key,
            endorsed=endorsed,
            release=release,
            formats=formats,
            calibration=calibration,
            tolerance=tolerance,
            seed=seed,
            probe_spec=probe_spec,
            probe_formats=probe_formats,
            holdout_limit=holdout_limit,
            version=version,
            progress=progress,
            triton=triton,
            triton_model_name=triton_model_name,
            max_excess=max_excess,
            gate_budget=gate_budget,
            noise_keying=NoiseKeying.parse(noise_keying),
            reference_count=reference_count,
        )
    except ExportError as exc:
        if (stage / "parity.json").is_file() and not (stage / "edge").exists():
            shutil.copy2(stage / "parity.json", out / FAILED_PARITY)
            shutil.rmtree(stage, ignore_errors=True)
            raise ExportError(str(exc).replace(str(stage / "parity.json"), str(out / FAILED_PARITY))) from None
        shutil.rmtree(stage, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out)
    edge = load_bundle(out / "edge", kind=BundleKind.EDGE, trust_key=None if key is None else key.public_key())
    cloud = load_bundle(out / "cloud", kind=BundleKind.CLOUD, trust_key=None if key is None else key.public_key())
    repository = None if result.triton is None else replace(result.triton, root=out / "triton")
    return replace(result, out=out, edge=edge, cloud=cloud, triton=repository)


def _endorsement_chain(paths, key) -> bytes | None:
    """The edge bundle's key-endorsements.json (JSON list), checked to end at the signing key."""
    if not paths:
        return None
    import json

    from privsplit.bundle import key_id

    if key is None:
        raise ConfigError("--endorsement ships a key rotation: pass --sign-key with the NEW (endorsed) key")
    items = []
    for path in paths:
        try:
            items.append(json.loads(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--endorsement {path} cannot be read as JSON ({exc}): write it with `privsplit keys endorse`"
            ) from None
        Endorsement.from_json(items[-1], where=str(path))
    if items[-1]["key_id"] != key_id(key.public_key()):
        raise ConfigError(
            f"--endorsement {paths[-1]} endorses key {items[-1]['key_id']}, but --sign-key is key "
            f"{key_id(key.public_key())}: sign with the endorsed key"
        )
    return (json.dumps(items, indent=2) + "\n").encode()


def _export(
    run,
    out,
    final,
    *,
    model,
    cfg,
    data,
    split,
    noise_seed,
    shape,
    key,
    endorsed,
    release,
    formats,
    calibration,
    tolerance,
    seed,
    probe_spec,
    probe_formats,
    holdout_limit,
    version,
    progress,
    triton,
    triton_model_name,
    max_excess,
    gate_budget,
    noise_keying,
    reference_count,
) -> ExportResult:
    """Build the whole export in ``out`` (the staging folder); ``final`` is where it will be moved."""
    from privsplit.export.runtime import ort_session

    calib = calibration_set(data, split, count=calibration, seed=seed)
    gen_noise = np.random.default_rng(seed + 1).standard_normal((len(calib), *shape)).astype(np.float32)
    scale, zero_point = wire_quantization(measure.torch_features(model, calib.images) + cfg.noise_sigma * gen_noise)
    wire = FeatureSpec(
        shape=shape,
        scale=scale,
        zero_point=zero_point,
        noise_sigma=float(cfg.noise_sigma),
        noise_keying=noise_keying,
    )
    holdout = measure.holdout_reference(model, data, split, seed=seed + 2, noise_seed=noise_seed, limit=holdout_limit)
    _log(
        f"{len(calib)} calibration images, {len(holdout.labels)} holdout images; wire int8 scale {scale:.4g} "
        f"zero point {zero_point}; torch holdout accuracy {holdout.torch_accuracy:.4f} "
        f"{noise_note(cfg.noise_sigma, noise_seed)}",
        progress,
    )

    with tempfile.TemporaryDirectory(prefix="export-", dir=out) as tmp:
        work = Path(tmp)
        cloud_dir = work / "cloud"
        cloud_dir.mkdir()
        server_path, purifier_path = make_cloud(model, run, cloud_dir)
        server_session = ort_session(server_path)
        cloud_parity = _cloud_parity(model, run, holdout, server_session, purifier_path)
        _log(
            f"server.onnx max abs err {cloud_parity['server']['max_abs_err']:.2e}"
            + ("" if purifier_path is None else f", purifier.onnx {cloud_parity['purifier']['max_abs_err']:.2e}"),
            progress,
        )

        factory = EncoderFactory(model, work, calib=calib, progress=progress)
        rows, arts, outputs = [], {}, {}
        for fmt in formats:
            _log(f"{fmt.value}: converting", progress)
            row, art, feats = _format_row(fmt, factory, holdout, wire, server_session, shape, progress)
            rows.append(row)
            if art is not None:
                arts[fmt], outputs[fmt] = art, feats
        sizes = {r.format: r.size_bytes for r in rows if r.size_bytes}
        rows = [judge(r, tolerance, sizes) for r in rows]

        reference = TorchReference(task_accuracy=holdout.torch_accuracy)
        probed: dict = {}
        if probe_spec is not None:
            rows, reference, probed = _probe(
                model, data, split, rows, arts, wire, probe_spec, probe_formats, seed, reference, progress
            )

        passed = [ExportFormat(r.format) for r in rows if r.passed]
        gate = None
        if probe_spec is None:
            _log(
                "the feature probe is skipped, so the leakage gate measures nothing",
                progress and max_excess is not None,
            )
        elif passed:
            gate = measure_gate(
                data=data,
                split=split,
                arts=arts,
                shipped=passed,
                representative=next(f for f in DEFAULT_PREFERENCE if f in passed),
                probed={f: leak for f, leak in probed.items() if f in passed},
                holdout=holdout,
                holdout_outputs=outputs,
                wire=wire,
                probe_spec=probe_spec,
                max_excess=max_excess,
                seed=seed,
                budget=gate_budget,
                progress=progress,
            )
            _log(f"measured in {gate.seconds:.0f} s; " + gate.summary().replace("\n", "\n    "), progress)
        report = ParityReport(
            run=str(run.path.name),
            holdout_size=len(holdout.labels),
            tolerance=tolerance,
            noise_sigma=float(cfg.noise_sigma),
            seed=seed,
            calibration_size=len(calib),
            wire=wire.to_json(),
            reference=reference,
            formats=tuple(rows),
            probe=None if probe_spec is None else probe_spec.to_json(),
            cloud=cloud_parity,
            noise_seed=noise_seed,
            gate=None if gate is None else gate.to_json(),
        )
        report.save(out / "parity.json")
        for r in rows:
            if not r.passed and (work / ExportFormat(r.format).filename).is_file():
                (out / "rejected").mkdir(exist_ok=True)
                shutil.copy2(work / ExportFormat(r.format).filename, out / "rejected" / ExportFormat(r.format).filename)
        if not passed:
            raise ExportError(f"no format passed parity (see {out / 'parity.json'}): nothing shipped")
        if gate is not None and not gate.passed:
            raise ExportError(refusal(gate, out / "parity.json"))

        edge_dir, final_cloud = out / "edge", out / "cloud"
        edge_dir.mkdir()
        for fmt in passed:
            shutil.copy2(work / fmt.filename, edge_dir / fmt.filename)
        if endorsed is not None:
            (edge_dir / ENDORSEMENTS).write_bytes(endorsed)
        shutil.copytree(cloud_dir, final_cloud)
        hashes = {fmt: sha256_file(edge_dir / fmt.filename) for fmt in passed}
        digest = hashlib.sha256("".join(sorted(hashes.values()) + [sha256_file(server_path)]).encode()).hexdigest()
        version = version or f"{run.path.name}-{digest[:12]}"
        default = next(f for f in DEFAULT_PREFERENCE if f in passed)
        common = {
            "classes": list(data.classes[data.task]),
            "features": wire.to_json(),
            "task": data.task,
            "private": data.private,
            "model": cfg.to_json(),
            "release": release,
        }
        if gate is not None:  # what the leakage gate measured, signed with the bundles (`privsplit verify` prints it)
            common[MANIFEST_KEY] = gate.to_json()
        preprocess = PreprocessSpec(
            size=cfg.image_size,
            channels=cfg.in_channels,
            mean=(0.0,) * cfg.in_channels,
            std=(1.0,) * cfg.in_channels,
            channel_order="RGB" if cfg.in_channels == 3 else "L",
        )
        edge_body = {
            **common,
            "preprocess": {
                **preprocess.to_json(),
                "normalisation": "in-artefact",
                "model_mean": list(cfg.mean),
                "model_std": list(cfg.std),
                "resize": "centre-crop to square, bilinear",
            },
            "encoders": {
                fmt.value: {
                    "file": fmt.filename,
                    "sha256": hashes[fmt],
                    "runtime": fmt.backend.value,
                    "input": report.format(fmt.value).input,
                    "output": report.format(fmt.value).output,
                }
                for fmt in passed
            },
            "default_encoder": default.value,
        }
        # the on-device acceptance check's inputs and expected wire features (signed with the bundle)
        edge_body[VECTORS_KEY] = write_reference_vectors(
            edge_dir,
            {f: arts[f] for f in passed},
            holdout.images,
            preprocess=preprocess,
            wire=wire,
            count=reference_count,
        )
        cloud_body = {
            **common,
            "server": {"file": "server.onnx", "input": "features", "output": "probs"},
            "purifier": None
            if purifier_path is None
            else {"file": "purifier.onnx", "input": "probs", "output": "purified"},
            "accepted_encoder_hashes": sorted(hashes.values()),
        }
    edge = write_bundle(edge_dir, kind=BundleKind.EDGE, version=version, body=edge_body, sign_key=key)
    # the cloud accepts features only from this edge manifest (its noise, quantization, preprocessing, encoders)
    cloud_body["accepted_manifest_hashes"] = [edge.manifest_sha256]
    cloud = write_bundle(final_cloud, kind=BundleKind.CLOUD, version=version, body=cloud_body, sign_key=key)
    repository = None
    if triton:
        repository = write_triton_repository(cloud, out / "triton", model_name=triton_model_name)
    _log(
        f"shipped {', '.join(f.value for f in passed)} (default {default.value}) -> {final}"
        + (" (signed)" if key is not None else " (unsigned)")
        + ("" if repository is None else f"; Triton repository {final / 'triton'}"),
        progress,
    )
    return ExportResult(
        out=out, parity=report, edge=edge, cloud=cloud, default_encoder=default.value, triton=repository
    )


def _cloud_parity(model, run, holdout, server_session, purifier_path) -> dict:
    """server.onnx (and purifier.onnx) vs torch on the holdout's noisy torch features."""
    import torch

    z = holdout.features + holdout.noise
    with torch.no_grad():
        ref = torch.softmax(model.head(torch.from_numpy(z)), dim=1).numpy()
    got = server_session.run(None, {"features": z})[0]
    out = {"server": {"max_abs_err": float(np.abs(ref - got).max()), "rows": int(len(z))}, "purifier": None}
    if float(np.abs(ref - got).max()) > 1e-3:
        raise ExportError(f"server.onnx differs from the torch server layers by {np.abs(ref - got).max():.2e} (> 1e-3)")
    if purifier_path is not None:
        out["purifier"] = check_purifier_parity(load_run_purifier(run), purifier_path, ref)
    return out


def _probe(model, data, split, rows, arts, wire, spec, probe_formats, seed, reference, progress):
    from privsplit.probes.feature_probe import torch_encoder_fn

    _log("feature-leakage probe on PyTorch's features", progress)
    ref = measure.leakage(torch_encoder_fn(model, seed=seed + 3), data, split, spec=spec, progress=progress)
    reference = replace(
        reference,
        attribute_balanced_accuracy=ref.attribute_balanced_accuracy,
        attribute_chance=ref.attribute_chance,
        attribute_task_floor=ref.attribute_task_floor,
        reconstruction_ssim=ref.reconstruction_ssim,
        reconstruction_baseline_ssim=ref.reconstruction_baseline_ssim,
    )
    out, probed = [], {}
    for row in rows:
        fmt = ExportFormat(row.format)
        if fmt in arts and (probe_formats is None or fmt in probe_formats):
            _log(f"feature-leakage probe on {fmt.value}'s wire features", progress)
            try:
                got = measure.artefact_leakage(
                    arts[fmt], wire, data, split, seed=seed + 3, spec=spec, progress=progress
                )
            except PrivsplitError as exc:
                raise ExportError(f"the feature probe failed on {fmt.value}: {exc}") from exc
            probed[fmt] = got
            row = replace(
                row,
                attribute_balanced_accuracy=got.attribute_balanced_accuracy,
                reconstruction_ssim=got.reconstruction_ssim,
            )
        out.append(row)
    return out, reference, probed
