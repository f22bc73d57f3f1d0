"""Typed spec and result of the output-leakage probe: versioned JSON + an npz of arrays, never pickle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privsplit.errors import ConfigError, ResultError, RunError
from privsplit.probes.inversion import InversionConfig, InversionMetrics
from privsplit.probes.membership import AttackConfig
from privsplit.probes.mia_metrics import MIAMetrics
from privsplit.results import check_schema, from_dict, read_json, save_json, save_npz, to_dict

OUTPUT_PROBE_SCHEMA_VERSION = 2  # 2: augmentation and lira_offline attacks, spec.augment, best_label_only
READABLE_VERSIONS = (1, 2)  # a version-1 file loads (its spec lacks augment: the attacks it ran are in it)
KIND = "output-probe"
_HINT = "re-run `privsplit probe outputs`"


@dataclass(frozen=True)
class OutputProbeSpec:
    """How the probe runs. ``noise_seed`` fixes the channel noise of a protected run (default ``seed + 101``)."""

    seed: int = 0
    noise_seed: int | None = None
    shadows: int = 1  # more shadow models sharpen the learned attacks and LiRA's per-record calibration
    shadow_epochs: int | None = None  # None: the run's own training recipe
    max_per_side: int | None = None  # cap the balanced member/non-member sets (None: as many as the split allows)
    attack: AttackConfig = field(default_factory=AttackConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    progress: bool = True
    augment: bool = True  # query flipped / shifted copies for the label-only augmentation attack

    def __post_init__(self) -> None:
        if self.shadows < 1:
            raise ConfigError(f"the output probe needs at least 1 shadow model, got {self.shadows}")
        if self.max_per_side is not None and self.max_per_side < 1:
            raise ConfigError(f"max_per_side must be >= 1, got {self.max_per_side}")

    @property
    def resolved_noise_seed(self) -> int:
        return self.seed + 101 if self.noise_seed is None else self.noise_seed

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputProbeSpec:
        return from_dict(cls, data)


@dataclass(frozen=True)
class MIAReport:
    """Every attack's metrics on one setting (raw or purified), the best one and the label floor.

    ``null_best_auc`` / ``null_best_auc_q95``: the mean and 95th percentile of the best AUC when the same records'
    membership labels are drawn at random (:func:`~privsplit.probes.mia_metrics.best_auc_null`): the best-of-all
    figure's chance level on this many records. None in results written before it.
    """

    label_floor: float
    attacks: dict[str, MIAMetrics]
    best_attack: str
    null_best_auc: float | None = None
    null_best_auc_q95: float | None = None

    @property
    def best(self) -> MIAMetrics:
        return self.attacks[self.best_attack]

    @property
    def excess_auc(self) -> float:
        return self.best.auc - self.label_floor

    @property
    def best_label_only(self) -> str | None:
        """The strongest attack that reads labels only (``label_only``, ``augmentation``), if any ran."""
        from privsplit.probes.membership import Attack

        names = [n for n in self.attacks if n in {a.value for a in Attack if a.label_only}]
        return max(names, key=lambda n: self.attacks[n].auc) if names else None

    @classmethod
    def from_metrics(
        cls, floor: float, attacks: dict[str, MIAMetrics], *, null: tuple[float, float] | None = None
    ) -> MIAReport:
        best = max(attacks, key=lambda name: (attacks[name].auc, attacks[name].advantage))
        mean, q95 = null if null is not None else (None, None)
        return cls(
            label_floor=floor, attacks=dict(attacks), best_attack=best, null_best_auc=mean, null_best_auc_q95=q95
        )

    def to_json(self) -> dict[str, Any]:
        return to_dict(
            {
                "label_floor": self.label_floor,
                "excess_auc": self.excess_auc,
                "best": {"attack": self.best_attack, **self.best.to_json()},
                "best_label_only": None
                if self.best_label_only is None
                else {"attack": self.best_label_only, **self.attacks[self.best_label_only].to_json()},
                "attacks": {k: v.to_json() for k, v in self.attacks.items()},
                "null_best_auc": self.null_best_auc,
                "null_best_auc_q95": self.null_best_auc_q95,
            }
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MIAReport:
        return cls(
            label_floor=float(data["label_floor"]),
            attacks={k: MIAMetrics.from_json(v) for k, v in data["attacks"].items()},
            best_attack=data["best"]["attack"],
            null_best_auc=data.get("null_best_auc"),
            null_best_auc_q95=data.get("null_best_auc_q95"),
        )


@dataclass(frozen=True, eq=False)
class OutputArrays:
    """What the plots need: membership labels, every attack's scores, top probabilities, inversion examples."""

    is_member: np.ndarray
    scores: dict[str, np.ndarray]  # "raw/<attack>" and "purified/<attack>"
    top_prob: dict[str, np.ndarray]  # "raw", "purified"
    images: np.ndarray  # uint8 (2n, H, W, C): n members then n non-members
    reconstructions: dict[str, np.ndarray]  # "raw"/"purified": float (2n, C, H, W)

    def save(self, path: Path) -> None:
        flat = {"is_member": self.is_member, "images": self.images}
        flat.update({f"scores/{k}": v for k, v in self.scores.items()})
        flat.update({f"top_prob/{k}": v for k, v in self.top_prob.items()})
        flat.update({f"reconstructions/{k}": v for k, v in self.reconstructions.items()})
        save_npz(path, flat)

    @classmethod
    def load(cls, path: Path) -> OutputArrays:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) + 1 :]: v for k, v in data.items() if k.startswith(prefix + "/")}

        return cls(data["is_member"], group("scores"), group("top_prob"), data["images"], group("reconstructions"))


@dataclass(frozen=True, eq=False)
class OutputProbeResult:
    run: str
    spec: OutputProbeSpec
    n_members: int
    n_nonmembers: int
    n_shadow_train: int
    noise_seed: int
    accuracy: float
    accuracy_members: float
    accuracy_purified: float
    accuracy_members_purified: float
    label_agreement: float
    label_agreement_members: float
    distortion_pct: float
    distortion_pct_members: float
    mia: MIAReport
    mia_purified: MIAReport
    inversion: InversionMetrics
    inversion_purified: InversionMetrics
    purifier: dict[str, Any]
    arrays: OutputArrays | None = None
    device: str | None = None  # where the shadows and attackers trained ("cpu", "cuda:0"); None in older files

    @property
    def accuracy_drop_points(self) -> float:
        return 100.0 * (self.accuracy - self.accuracy_purified)

    @property
    def inversion_mse_ratio(self) -> float:
        return self.inversion_purified.mse / max(self.inversion.mse, 1e-12)

    def to_json(self) -> dict[str, Any]:
        return to_dict(
            {
                "schema_version": OUTPUT_PROBE_SCHEMA_VERSION,
                "kind": KIND,
                "run": self.run,
                "spec": self.spec.to_json(),
                "n_members": self.n_members,
                "n_nonmembers": self.n_nonmembers,
                "n_shadow_train": self.n_shadow_train,
                "noise_seed": self.noise_seed,
                "accuracy": self.accuracy,
                "accuracy_members": self.accuracy_members,
                "accuracy_purified": self.accuracy_purified,
                "accuracy_members_purified": self.accuracy_members_purified,
                "accuracy_drop_points": self.accuracy_drop_points,
                "label_agreement": self.label_agreement,
                "label_agreement_members": self.label_agreement_members,
                "distortion_pct": self.distortion_pct,
                "distortion_pct_members": self.distortion_pct_members,
                "distortion_definition": "100 x mean over holdout records of sum_k |p_k - q_k| (L1; range 0-200; "
                "total variation = half); distortion_pct_members: the same over members",
                "mia": self.mia.to_json(),
                "mia_purified": self.mia_purified.to_json(),
                "inversion": self.inversion.to_json(),
                "inversion_purified": self.inversion_purified.to_json(),
                "inversion_mse_ratio": self.inversion_mse_ratio,
                "purifier": self.purifier,
                "device": self.device,
            }
        )

    @classmethod
    def from_json(
        cls, data: dict[str, Any], arrays: OutputArrays | None = None, *, source: str = "output-probe result"
    ) -> OutputProbeResult:
        found = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(data, dict) and data.get("kind") == KIND and found not in READABLE_VERSIONS:
            raise ResultError(
                f"{source} has schema version {found!r}, expected {' or '.join(map(str, READABLE_VERSIONS))}: {_HINT}"
            )
        version = found if found in READABLE_VERSIONS else OUTPUT_PROBE_SCHEMA_VERSION
        data = check_schema(data, version=version, kind=KIND, source=source, hint=_HINT)
        mia = {k: MIAReport.from_json(data[k]) for k in ("mia", "mia_purified")}  # MIAMetrics renames a key
        return from_dict(cls, {**data, **mia, "arrays": arrays})

    def save(self, json_path: str | Path) -> Path:
        """Write ``json_path`` and, when arrays are held, ``<stem>.npz`` beside it."""
        json_path = Path(json_path)
        if self.arrays is not None:
            self.arrays.save(json_path.with_suffix(".npz"))
        return save_json(json_path, self.to_json())

    @classmethod
    def load(cls, json_path: str | Path) -> OutputProbeResult:
        json_path = Path(json_path)
        if not json_path.is_file():
            raise RunError(f"{json_path} not found: write it with `privsplit probe outputs RUN --json {json_path}`")
        npz = json_path.with_suffix(".npz")
        arrays = OutputArrays.load(npz) if npz.is_file() else None
        data = read_json(json_path, what="an output-probe result", hint=_HINT)
        return cls.from_json(data, arrays, source=str(json_path))

    def summary(self) -> str:
        """A side-by-side text table: every figure without and with the purifier."""
        rows: list[tuple[str, str, str]] = []

        def add(name: str, raw: float, pur: float, fmt: str = "{:.3f}") -> None:
            rows.append((name, fmt.format(raw), fmt.format(pur)))

        add("holdout accuracy (with channel noise)", self.accuracy, self.accuracy_purified, "{:.4f}")
        add("members accuracy", self.accuracy_members, self.accuracy_members_purified, "{:.4f}")
        rows.append(("label agreement (holdout)", "-", f"{self.label_agreement:.4f}"))
        rows.append(
            (
                "distortion % L1 (holdout / members)",
                "-",
                f"{self.distortion_pct:.2f} / {self.distortion_pct_members:.2f}",
            )
        )
        rows.append(("MIA label floor (AUC)", f"{self.mia.label_floor:.3f}", f"{self.mia_purified.label_floor:.3f}"))
        for name in self.mia.attacks:
            a, b = self.mia.attacks[name], self.mia_purified.attacks.get(name)
            rows.append(
                (
                    f"  {name}: AUC / adv / TPR@1% / TPR@0.1%",
                    _fmt_mia(a),
                    _fmt_mia(b) if b is not None else "-",
                )
            )
        rows.append(("best attack", self.mia.best_attack, self.mia_purified.best_attack))
        add("best AUC", self.mia.best.auc, self.mia_purified.best.auc)
        add("best AUC - label floor", self.mia.excess_auc, self.mia_purified.excess_auc, "{:+.3f}")
        if self.mia.null_best_auc is not None and self.mia_purified.null_best_auc is not None:
            rows.append(
                (
                    "best AUC by chance (labels redrawn): mean / 95%",
                    f"{self.mia.null_best_auc:.3f} / {self.mia.null_best_auc_q95:.3f}",
                    f"{self.mia_purified.null_best_auc:.3f} / {self.mia_purified.null_best_auc_q95:.3f}",
                )
            )
        add("best advantage", self.mia.best.advantage, self.mia_purified.best.advantage)
        add("inversion MSE (members / non-members)", self.inversion.mse, self.inversion_purified.mse, "{:.4f}")
        rows[-1] = (
            rows[-1][0],
            f"{self.inversion.mse:.4f} ({self.inversion.mse_members:.4f}/{self.inversion.mse_nonmembers:.4f})",
            f"{self.inversion_purified.mse:.4f} ({self.inversion_purified.mse_members:.4f}/"
            f"{self.inversion_purified.mse_nonmembers:.4f})",
        )
        add("inversion SSIM", self.inversion.ssim, self.inversion_purified.ssim)
        rows.append(
            (
                "inversion baselines: mean image / class-mean MSE",
                f"{self.inversion.mean_image_mse:.4f} / {self.inversion.class_mean_mse:.4f}",
                f"{self.inversion_purified.mean_image_mse:.4f} / {self.inversion_purified.class_mean_mse:.4f}",
            )
        )
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows + [("", "without purifier", "")])
        head = f"{'':{w0}}  {'without purifier':>{w1}}  with purifier (adaptive attacker)"
        lines = [
            f"output leakage of {self.run}: {self.n_members} members vs {self.n_nonmembers} non-members, "
            f"attack models trained on {self.n_shadow_train} shadow records",
            head,
            "-" * len(head),
        ]
        lines += [f"{a:{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
        lines.append(f"inversion MSE ratio purified/raw: {self.inversion_mse_ratio:.2f}x")
        return "\n".join(lines)


def _fmt_mia(m: MIAMetrics) -> str:
    return f"{m.auc:.3f} / {m.advantage:.3f} / {m.tpr_at_1pct_fpr:.3f} / {m.tpr_at_01pct_fpr:.3f}"
