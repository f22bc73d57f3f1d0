"""``build_report(DIR)``: summary.json, report.md and a self-contained report.html from saved results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from privsplit.report.document import Document, Figure, Table, to_html, to_markdown
from privsplit.report.layout import PROTECTED, QuickstartLayout
from privsplit.report.summary import build_summary
from privsplit.report.unforeseen import add_unforeseen_section, unforeseen_figures
from privsplit.results import save_json


@dataclass(frozen=True)
class ReportPaths:
    summary: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def _f(value, digits: int = 3, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _probe_text(m0: dict) -> str:
    """Which attackers and training sets the feature probe ran, and what it left out (read from its spec)."""
    from privsplit.report.verdicts import ATTACKER_NAMES, join_names

    probe = m0.get("probe") or {}
    attackers = probe.get("attackers") or []
    if not attackers:
        return "The probe's settings were not recorded."
    sets = [f"{100 * c:g} % of the attacker part" for c in probe.get("curve", []) if c < 1.0]
    if 1.0 in probe.get("curve", []):
        sets.append(f"the whole attacker part ({probe.get('attacker_size')} images)")
    if probe.get("pooled"):
        sets.append("members + reference + attacker (the encoder's own training images included)")
    text = (
        f"The probe that ran: {join_names([ATTACKER_NAMES.get(a, a) for a in attackers])}, each trained on "
        f"{join_names(sets)}: {m0['attribute_attackers_scored']} attackers, scored on {probe.get('holdout_size')} "
        "holdout images; the headline is the best of them."
    )
    left_out = [ATTACKER_NAMES[a] for a in ("gbm",) if a not in attackers]
    if [c for c in probe.get("curve", []) if c < 1.0] == [] and len(attackers) > 0:
        left_out.append("the learning curve's smaller sets")
    if not probe.get("pooled"):
        left_out.append("the pooled training set (members + reference + attacker)")
    if not probe.get("noise_null"):
        left_out.append("the noise-feature null (every attacker trained again on features that carry nothing)")
    if left_out:
        text += (
            f" Not run in this probe: {join_names(left_out)}; "
            "`privsplit probe features RUN --null` runs the full probe, whose best attacker reads higher."
        )
    return text


def _features(doc: Document, s: dict) -> None:
    from privsplit.report.verdicts import feature_verdict

    sec = doc.section("What the device sends: feature leakage")
    models = s["models"]
    if not models:
        sec.add("No feature-leakage probe was found (`privsplit probe features RUN`).")
        return
    m0 = models[0]
    sec.add(
        f"An attacker who holds the features trains, after the fact, on its own labelled images and is scored on "
        f"`holdout`, for the private attribute **{m0['attribute']}**; a decoder tries to rebuild the image. "
        + _probe_text(m0)
        + f" Chance is {_f(m0['attribute_chance'])}, but the best of several attackers reads above it by chance: "
        "its **chance level** (null) is the best of the same attackers' holdout predictions when the holdout's "
        "labels are permuted (2,000 draws; mean and 95th percentile). "
        f"The **task floor** ({_f(m0['attribute_task_floor'])}) is what the true task label alone "
        f"gives away (the server learns the task anyway); "
        f"the mean-image baseline SSIM is {_f(m0['reconstruction_baseline_ssim'])}."
    )
    rows = [
        [
            m["name"],
            f"{m['feature_channels']} ch, σ {m['noise_sigma']:g}, λ {m['adv_weight']:g}",
            _f(m["task_accuracy"]),
            f"{_f(m['attribute_balanced_accuracy'])} ({m['attribute_attacker']})",
            f"{_f(m.get('attribute_null_mean'))} / {_f(m.get('attribute_null_q95'))}",
            _f(m["reconstruction_ssim"]),
        ]
        for m in models
    ]
    sec.add(
        Table(
            [
                "model",
                "encoder (channels, noise, adversary weight)",
                "task accuracy (with channel noise)",
                "best attribute attacker, bal. acc.",
                "its chance level: mean / 95th pct",
                "reconstruction SSIM",
            ],
            rows,
        )
    )
    noise = [m for m in models if m.get("attribute_noise_null") is not None]
    if noise:
        sec.add(
            "Noise-feature null (the same attackers trained on features that carry nothing, one draw): "
            + ", ".join(f"{m['name']} {_f(m['attribute_noise_null'])}" for m in noise)
            + "."
        )
    sec.add("\n".join(f"- **{m['name']}**: {feature_verdict(m)}." for m in models))
    if s["artefacts"]:
        rows = [
            [
                a["format"],
                _f(a["size_kb"], 1),
                _f(a["task_accuracy"]),
                _f(a["attribute_balanced_accuracy"]),
                _f(a["reconstruction_ssim"]),
                _f(a["cosine"], 5),
                "yes" if a["shipped"] else "no",
            ]
            for a in s["artefacts"]
        ]
        sec.add(
            Table(
                [
                    "protected encoder as",
                    "size KB",
                    "task accuracy",
                    "attribute attacker bal. acc.",
                    "reconstruction SSIM",
                    "cosine vs PyTorch",
                    "shipped",
                ],
                rows,
                caption="PyTorch against the exported artefacts, "
                "on the same holdout images with the same int8 wire (export parity).",
            )
        )


def _outputs(doc: Document, s: dict) -> None:
    o = s["outputs"]
    sec = doc.section("What the cloud returns: membership inference and inversion")
    if o is None:
        sec.add(
            "No output-leakage probe was found (`privsplit train-purifier RUN` then `privsplit probe outputs RUN`)."
        )
        return
    from privsplit.report.verdicts import ATTACK_NAMES, join_names, membership_verdict

    attacks = o.get("attacks") or []
    names = join_names([ATTACK_NAMES.get(a, a) for a in attacks]) if attacks else "the probe's attacks"
    sec.add(
        f"{o['members']} training members against {o['nonmembers']} non-members. "
        f"{len(attacks) or 'The'} attacks ran ({names}; {o.get('shadows') or 1} shadow model(s)), "
        "fitted on the attacker's own data; "
        "with the purifier the attacker is **adaptive**: it sees only purified scores, "
        f"for its own data too. A label-preserving purifier cannot go below the **label floor** "
        f"(AUC {_f(o['label_floor'])}): what the "
        "predicted label says about membership. The best of several attacks reads above 0.5 by chance: its "
        "**chance level** is the best AUC when the same records' membership labels are redrawn at random "
        "(2,000 draws, one shared by every attack; mean and 95th percentile)."
    )
    sec.add(membership_verdict(o["raw"], o["purified"], len(attacks)))
    d = s.get("membership_defense")
    if d is not None:
        text = f"The model was trained with membership defence **{d['name']}**"
        if d["name"] == "relaxloss":
            text += f" (target loss α = {_f(d.get('relax_alpha'))})"
        if d["name"] == "selena":
            text += (
                f" (self-distillation from {d.get('selena_teachers')} teachers, each member's target from the "
                f"{d.get('selena_held_out')} that never saw it, true-label share {_f(d.get('selena_label_weight'))})"
            )
        if d.get("privacy"):
            pv = d["privacy"]
            text += (
                f": DP-SGD spent **ε = {pv['epsilon']:.2f}** at δ = {pv['delta']:g} (noise multiplier "
                f"{pv['noise_multiplier']:.3f}, per-record clipping {pv['max_grad_norm']:g}, {pv['steps']} steps)"
            )
        sec.add(text + ".")
    r, p = o["raw"], o["purified"]
    rows = [
        ["task accuracy (holdout)", _f(o["accuracy"]), _f(o["accuracy_purified"])],
        ["best attack", r["attack"], p["attack"]],
        ["best attack AUC (label floor " + _f(o["label_floor"]) + ")", _f(r["auc"]), _f(p["auc"])],
        [
            "its chance level: mean / 95th pct",
            f"{_f(r.get('null_best_auc'))} / {_f(r.get('null_best_auc_q95'))}",
            f"{_f(p.get('null_best_auc'))} / {_f(p.get('null_best_auc_q95'))}",
        ],
        ["attacker advantage", _f(r["advantage"]), _f(p["advantage"])],
        ["TPR at 1 % FPR", _f(r["tpr_at_1pct_fpr"]), _f(p["tpr_at_1pct_fpr"])],
        ["TPR at 0.1 % FPR", _f(r["tpr_at_0.1pct_fpr"]), _f(p["tpr_at_0.1pct_fpr"])],
        [
            "inversion MSE (class-mean floor " + _f(o["inversion_class_mean_mse"], 4) + ")",
            _f(o["inversion_mse"], 4),
            _f(o["inversion_mse_purified"], 4),
        ],
        ["label agreement with the unpurified argmax", "–", _f(o["label_agreement"], 4)],
        ["distortion (mean L1, %)", "–", _f(o["distortion_pct"], 2)],
    ]
    sec.add(Table(["", "without purifier", "with purifier"], rows))


def _latency(doc: Document, s: dict) -> None:
    sec = doc.section("Latency and bytes")
    if s["serving"]:
        v = s["serving"]
        sec.add(
            f"Edge inference from the flashed device folder over real gRPC: {v['ok']}/{v['images']} "
            "holdout images answered, accuracy "
            f"{_f(v['accuracy'])} through {v['encoder']} on {v['runtime']}."
        )
    if s["device_latency"]:
        rows = [
            [
                d["runtime"],
                d["encoder"],
                _f(d["p50_ms"]),
                _f(d["p99_ms"]),
                _f(d["encode_p50_ms"]),
                _f(d["rpc_p50_ms"]),
                _f(d["init_ms"], 1),
                _f(d["peak_rss_mb"], 0),
                f"{d['bytes_per_request']} (float32 {d['bytes_float32_request']}, JPEG {d['bytes_input_jpeg']})",
            ]
            for d in s["device_latency"]
        ]
        sec.add(
            Table(
                [
                    "device runtime",
                    "encoder",
                    "p50 ms",
                    "p99 ms",
                    "encode p50 ms",
                    "round trip p50 ms",
                    "init ms",
                    "peak RSS MB",
                    "bytes per request",
                ],
                rows,
                caption="One image per request, 1 thread, measured on this machine (not a Pi): "
                "compare backends as ratios.",
            )
        )
    if s["cloud"]:
        c = s["cloud"]
        rows = [
            [
                p["concurrency"],
                _f(p["throughput"], 0),
                _f(p["p50_ms"]),
                _f(p["p99_ms"]),
                _f(p["server_compute_us_p50"], 0),
                _f(p["batch_size_mean"], 1),
                p["errors"],
            ]
            for p in c["points"]
        ]
        sec.add(
            Table(
                ["cloud concurrency", "requests/s", "p50 ms", "p99 ms", "server compute µs", "mean batch", "errors"],
                rows,
                caption=f"{c['request_bytes']} B requests (int8 features of one image), "
                f"{c['duration_s']:g} s per level.",
            )
        )


def _stages(doc: Document, s: dict) -> None:
    if not s["stages"]:
        return
    sec = doc.section("Stages")
    rows = [[t["name"], _f(t["seconds"], 1), t.get("detail", "")] for t in s["stages"]]
    sec.add(Table(["stage", "seconds", "result"], rows, caption=f"Total {_f(s['total_seconds'], 0)} s."))
    if s.get("service"):
        sec.add(f"The cloud service stopped on SIGTERM with exit code {s['service']['exit_code']}.")


_THREAT = (
    "- Feature probe: the attacker holds the features the device sends (an eavesdropper or the cloud itself), knows "
    "the encoder's outputs for its own labelled images (`attacker` part, disjoint from training) and trains any of "
    "the probe's attackers (named in its section) and a decoder on them.\n"
    "- Output probe: the attacker is a client of the deployed service; it knows which of its own records were "
    "training members of a shadow model it trains on its own data, and queries the service for the scores of the "
    "records it tests.\n"
    "- Limits: one seed per figure; small test sets give ±1–3 points of sampling noise (every holdout accuracy "
    "includes the channel noise: one seeded draw per run, shared by train, probe and export); latency is measured "
    "on this machine, not on a device; a label-preserving purifier cannot remove what the label itself reveals (the "
    "label floor)."
)


def build_document(s: dict, figures: dict[str, Path]) -> Document:
    d = s["data"]
    doc = Document(
        title="privsplit report",
        subtitle=f"{d['spec']}: task {d['task']}, private attribute {d['private']}, seed {d['seed']}; "
        f"privsplit {s['privsplit']}" + ("" if s["complete"] else " — INCOMPLETE: some stages did not run"),
    )
    _features(doc, s)
    for key, caption in (
        ("privacy_utility", "Privacy-utility: task accuracy against the best attacker (left) and the decoder (right)."),
        ("reconstructions", "Holdout images and what a decoder rebuilds from each model's features."),
        (
            "training",
            "Training: task accuracy on reference per epoch (left); under a leakage budget, the controller's fresh "
            "attacker on reference against its aim, and the adversaries' weight it set (right).",
        ),
    ):
        if key in figures:
            doc.sections[-1].add(Figure(figures[key], caption))
    if s.get("unforeseen"):
        add_unforeseen_section(doc, s["unforeseen"], figures)
    _outputs(doc, s)
    for key, caption in (
        ("roc", "ROC curves of the membership attacks (log FPR), without and with the purifier."),
        ("inversion", "Model inversion from the returned top-k scores, without and with the purifier."),
    ):
        if key in figures:
            doc.sections[-1].add(Figure(figures[key], caption))
    _latency(doc, s)
    if "latency" in figures:
        doc.sections[-1].add(
            Figure(
                figures["latency"],
                "Latency histograms: the device path per backend and the cloud round trip per concurrency.",
            )
        )
    _stages(doc, s)
    doc.section("Threat model and limits").add(_THREAT)
    return doc


def _figures(layout: QuickstartLayout, s: dict) -> dict[str, Path]:
    from privsplit.report import quickstart_plots as qp
    from privsplit.report.training_plots import plot_training

    plots = layout.plots
    found = {
        "privacy_utility": qp.plot_privacy_utility(s, plots / "privacy_utility.png"),
        "reconstructions": qp.plot_reconstructions(layout, s, plots / "reconstructions.png"),
        "training": plot_training(layout.root, s, plots / "training.png"),
        "latency": qp.plot_latency(layout, plots / "latency.png") if layout.measure.is_dir() else None,
    }
    if s.get("unforeseen"):
        protected = layout.root if s["source"] == "run" else layout.run(PROTECTED)
        found.update(unforeseen_figures(protected, s["unforeseen"], plots))
    if s["outputs_file"]:
        from privsplit.probes.output_results import OutputProbeResult
        from privsplit.report.output_plots import plot_inversion_grid, plot_roc

        result = OutputProbeResult.load(layout.root / s["outputs_file"])
        if result.arrays is not None:
            found["roc"] = plot_roc(result, plots / "roc.png")
            found["inversion"] = plot_inversion_grid(result, plots / "inversion.png")
    return {k: v for k, v in found.items() if v is not None}


def build_report(root: str | Path) -> ReportPaths:
    """Write ``summary.json``, ``report.md``, ``report.html`` and ``plots/`` into ``root``.

    ``root`` is a quickstart or run folder.
    """
    layout = QuickstartLayout(Path(root))
    summary = build_summary(layout.root)
    figures = _figures(layout, summary)
    summary["figures"] = {k: str(v.relative_to(layout.root)) for k, v in figures.items()}
    save_json(layout.summary, summary)
    doc = build_document(summary, figures)
    layout.report_md.write_text(to_markdown(doc, relative_to=layout.root))
    layout.report_html.write_text(to_html(doc))
    return ReportPaths(
        summary=layout.summary, markdown=layout.report_md, html=layout.report_html, figures=tuple(figures.values())
    )
