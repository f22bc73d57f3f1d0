"""``summary.json``: the headline figures of a quickstart folder, gathered from its saved results.

Nothing is recomputed here: every number is read from a file a stage wrote (run metrics, probe
results, the parity report, latency results), so ``privsplit report`` rebuilds the same summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privsplit import __version__
from privsplit.errors import RunError
from privsplit.report.layout import PROTECTED, QuickstartLayout
from privsplit.report.unforeseen import unforeseen_summary
from privsplit.results import read_json

SUMMARY_SCHEMA_VERSION = 1


def _read(path: Path, what: str) -> dict:
    return read_json(path, what=what, hint="rerun `privsplit quickstart` or the stage that writes it")


def _maybe(path: Path, what: str) -> dict | None:
    return _read(path, what) if path.is_file() else None


def _probe_settings(probe: dict) -> dict:
    """What the feature probe that wrote ``probe`` ran: attacker families, training sets, nulls."""
    spec = probe.get("spec") or {}
    return {
        "attackers": list(spec.get("attackers") or []),
        "curve": list(spec.get("curve") or []),
        "pooled": bool(spec.get("pooled")),
        "noise_null": bool(spec.get("null")),
        "attacker_size": (probe.get("sizes") or {}).get("attacker"),
        "holdout_size": (probe.get("sizes") or {}).get("holdout"),
        "features_from": (probe.get("data") or {}).get("features_from", "torch"),
    }


def _feature_row(name: str, probe: dict, metrics: dict, train: dict) -> dict:
    attr, rec = probe.get("attribute") or {}, probe.get("reconstruction") or {}
    return {
        "name": name,
        "run": train["run"],
        "adv_weight": train.get("adv_weight"),
        "noise_sigma": train.get("noise_sigma"),
        "feature_channels": train.get("feature_channels"),
        "task_accuracy": probe["task"]["accuracy"],
        "majority_baseline": metrics["task"].get("majority_baseline"),
        "attribute": attr.get("name"),
        "attribute_attacker": attr.get("best"),
        "attribute_balanced_accuracy": attr.get("balanced_accuracy"),
        "attribute_auc": attr.get("auc"),
        "attribute_chance": attr.get("chance"),
        "attribute_task_floor": attr.get("task_floor"),
        "attribute_null_mean": attr.get("permutation_null_mean"),
        "attribute_null_q95": attr.get("permutation_null_q95"),
        "attribute_noise_null": attr.get("null_balanced_accuracy"),
        "attribute_attackers_scored": len(attr.get("attackers") or {}),
        "probe": _probe_settings(probe),
        "reconstruction_ssim": rec.get("ssim"),
        "reconstruction_psnr": rec.get("psnr"),
        "reconstruction_baseline_ssim": rec.get("baseline_ssim"),
        "train_seconds": metrics.get("train_seconds"),
    }


def _artefacts(parity: dict) -> list[dict]:
    ref = parity["reference"]
    rows = [
        {
            "format": "pytorch",
            "size_kb": None,
            "task_accuracy": ref["task_accuracy"],
            "attribute_balanced_accuracy": ref.get("attribute_balanced_accuracy"),
            "reconstruction_ssim": ref.get("reconstruction_ssim"),
            "cosine": 1.0,
            "shipped": True,
        }
    ]
    for name, row in parity["formats"].items():
        rows.append(
            {
                "format": name,
                "size_kb": row["size_bytes"] / 1024 if row.get("size_bytes") else None,
                "task_accuracy": row.get("task_accuracy"),
                "attribute_balanced_accuracy": row.get("attribute_balanced_accuracy"),
                "reconstruction_ssim": row.get("reconstruction_ssim"),
                "cosine": row.get("cosine"),
                "shipped": bool(row.get("passed")),
            }
        )
    return rows


def _mia(report: dict) -> dict:
    best = report["best"]
    return {
        "attack": best["attack"],
        "auc": best["auc"],
        "advantage": best["advantage"],
        "tpr_at_1pct_fpr": best["tpr_at_1pct_fpr"],
        "tpr_at_0.1pct_fpr": best["tpr_at_0.1pct_fpr"],
        "excess_auc": report["excess_auc"],
        "null_best_auc": report.get("null_best_auc"),
        "null_best_auc_q95": report.get("null_best_auc_q95"),
    }


def _membership_defense(run: Path) -> dict | None:
    """The probed run's membership defence (``privsplit train --membership-defense``), with DP's budget."""
    config, metrics = _maybe(run / "config.json", "the run's config"), _maybe(run / "metrics.json", "run metrics")
    if config is None:
        return None
    defense = dict(config["train"].get("membership_defense") or {"kind": "none"})
    privacy = ((metrics or {}).get("membership_defense") or {}).get("privacy")
    return {"name": defense["kind"], **{k: v for k, v in defense.items() if k != "kind"}, "privacy": privacy}


def _outputs(probe: dict) -> dict:
    from privsplit.report.verdicts import inside_null

    inv, inv_p = probe["inversion"], probe["inversion_purified"]
    raw, purified = _mia(probe["mia"]), _mia(probe["mia_purified"])
    measurable = {
        name: None if inside is None else not inside
        for name, inside in (
            ("raw", inside_null(raw["auc"], raw["null_best_auc_q95"])),
            ("purified", inside_null(purified["auc"], purified["null_best_auc_q95"])),
        )
    }
    return {
        "members": probe["n_members"],
        "nonmembers": probe["n_nonmembers"],
        "accuracy": probe["accuracy"],
        "accuracy_purified": probe["accuracy_purified"],
        "accuracy_drop_points": probe["accuracy_drop_points"],
        "label_agreement": probe["label_agreement"],
        "distortion_pct": probe["distortion_pct"],
        "label_floor": probe["mia"]["label_floor"],
        "attacks": list(probe["mia"]["attacks"]),
        "shadows": (probe.get("spec") or {}).get("shadows"),
        "raw": raw,
        "purified": purified,
        "leak_measurable": measurable,  # best AUC above the null's 95th percentile (None: no null recorded)
        "inversion_mse": inv["mse"],
        "inversion_mse_purified": inv_p["mse"],
        "inversion_mse_ratio": probe["inversion_mse_ratio"],
        "inversion_ssim": inv["ssim"],
        "inversion_ssim_purified": inv_p["ssim"],
        "inversion_class_mean_mse": inv["class_mean_mse"],
        "inversion_mean_image_mse": inv["mean_image_mse"],
    }


def _device(layout: QuickstartLayout) -> list[dict]:
    rows = []
    for path in sorted(layout.measure.glob("edge_bench_*.json")):
        b = _read(path, "a device latency result")
        stages = b["stages"]
        rows.append(
            {
                "runtime": b["runtime"],
                "encoder": b["encoder"],
                "runs": b["runs"],
                "init_ms": b["init_ms"],
                "first_ms": b["first_ms"],
                "p50_ms": b["p50_ms"],
                "p99_ms": b["p99_ms"],
                "encode_p50_ms": stages["encode"]["p50_ms"],
                "rpc_p50_ms": stages["rpc"]["p50_ms"] if "rpc" in stages else None,
                "peak_rss_mb": b["peak_rss_mb"],
                "bytes_per_request": b["bytes_per_request"],
                "bytes_float32_request": b["bytes_float32_request"],
                "bytes_input_jpeg": b["bytes_input_jpeg"],
                "file": str(path.relative_to(layout.root)),
            }
        )
    return rows


def _cloud(layout: QuickstartLayout) -> dict | None:
    load = _maybe(layout.cloud_load, "the cloud latency result")
    if load is None:
        return None
    points = [
        {
            k: p[k]
            for k in (
                "concurrency",
                "requests",
                "errors",
                "throughput",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "server_compute_us_p50",
                "batch_size_mean",
            )
        }
        for p in load["points"]
    ]
    return {"request_bytes": load["request_bytes"], "duration_s": load["spec"]["duration_s"], "points": points}


def _run_state(root: Path) -> dict:
    """A plain run folder (``privsplit train``) read as a one-model quickstart record."""
    run_config = _read(root / "config.json", "the run's config")
    train = run_config["train"]
    return {
        "config": {**run_config["data"], "data": run_config["data"]["spec"], "seed": run_config["seed"]},
        "models": [
            {
                "name": root.resolve().name,
                "run": ".",
                "adv_weight": train["adv_weight"],
                "noise_sigma": train["noise_sigma"],
                "feature_channels": train["feature_channels"],
            }
        ],
        "stages": [],
        "complete": True,
        "outputs": "probe_outputs.json",
    }


def source_kind(root: str | Path) -> str:
    """``quickstart`` (a quickstart folder) or ``run`` (a run folder); raises for anything else."""
    root = Path(root)
    if (root / "quickstart.json").is_file():
        return "quickstart"
    if (root / "config.json").is_file() and (root / "metrics.json").is_file():
        return "run"
    raise RunError(
        f"{root} is neither a quickstart folder (quickstart.json) nor a run folder (config.json + metrics.json)"
    )


def build_summary(root: str | Path) -> dict[str, Any]:
    """Gather ``summary.json`` from a quickstart folder (see :class:`~privsplit.quickstart.QuickstartLayout`)
    or from a single run folder (its probes; no export or latency sections)."""
    layout = QuickstartLayout(Path(root))
    kind = source_kind(layout.root)
    state = _read(layout.state, "the quickstart's own record") if kind == "quickstart" else _run_state(layout.root)
    config = state["config"]
    models = []
    for entry in state["models"]:
        run = layout.root / entry["run"]
        probe = _maybe(run / "probe_features.json", "a feature-leakage probe")
        if probe is not None:
            models.append(_feature_row(entry["name"], probe, _read(run / "metrics.json", "run metrics"), entry))
    outputs_path = (
        layout.root / state["outputs"] if "outputs" in state else layout.run(PROTECTED) / "probe_outputs.json"
    )
    outputs = _maybe(outputs_path, "the output-leakage probe")
    parity = _maybe(layout.parity, "the export parity report")
    flash = _maybe(layout.flash, "the flash record")
    protected = layout.root if kind == "run" else layout.run(PROTECTED)
    edge = _maybe(layout.edge_bundle / "manifest.json", "the edge bundle's manifest") if kind != "run" else None
    keying = ((edge or {}).get("features") or {}).get("noise_keying", "fresh" if edge else None)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "kind": "privsplit-summary",
        "source": kind,
        "privsplit": __version__,
        "complete": bool(state.get("complete")),
        "data": {"spec": config["data"], "task": config["task"], "private": config["private"], "seed": config["seed"]},
        "models": models,
        "artefacts": _artefacts(parity) if parity else [],
        "wire": parity["wire"] if parity else None,
        "outputs": _outputs(outputs) if outputs else None,
        "outputs_file": str(outputs_path.relative_to(layout.root)) if outputs else None,
        "membership_defense": _membership_defense(outputs_path.parent) if outputs else None,
        "flash": {"version": flash["version"], "uploaded_bytes": flash["uploaded_bytes"], "seconds": flash["seconds"]}
        if flash
        else None,
        "serving": state.get("serving"),
        "device_latency": _device(layout) if layout.measure.is_dir() else [],
        "cloud": _cloud(layout),
        "service": state.get("service"),
        "unforeseen": unforeseen_summary(protected, config["data"], noise_keying=keying),
        "stages": state["stages"],
        "total_seconds": state.get("total_seconds"),
    }
