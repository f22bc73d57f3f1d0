"""``utkface:<dir>``: UTKFace faces, labelled by their file names.

Each image is named ``<age>_<gender>_<race>_<date&time>.jpg`` (the aligned set adds ``.chip.jpg``),
with gender 0 male / 1 female and race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others. Image files
whose names do not follow that pattern are skipped with one warning that counts them. The folder is
searched recursively (the in-the-wild release comes in parts), in sorted path order.

Labels: ``age_bin`` (decades, 70+ last), ``gender`` and ``race``; there is no default task.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np

from privsplit.data.cache import cached_arrays
from privsplit.data.dataset import LabeledImages
from privsplit.data.images import read_images
from privsplit.data.spec import register_loader
from privsplit.errors import DataError

AGE_BINS = ("0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_NAME = re.compile(r"^(\d{1,3})_(\d)_(\d)_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
_CACHE_VERSION = 1


def parse_name(name: str) -> tuple[int, int, int] | None:
    """``(age, gender, race)`` from a UTKFace file name, or ``None`` when it is malformed."""
    m = _NAME.match(name)
    if m is None:
        return None
    age, gender, race = int(m[1]), int(m[2]), int(m[3])
    if gender >= len(GENDERS) or race >= len(RACES):
        return None
    return age, gender, race


@register_loader("utkface", default_image_size=64, needs_path=True, help="UTKFace folder of age_gender_race_date.jpg")
def load_utkface(path: Path | None, *, image_size: int, limit: int | None) -> LabeledImages:
    if path is None or not Path(path).is_dir():
        raise DataError(f"UTKFace folder {path} not found")
    root = Path(path)
    files: list[Path] = []
    rows: list[tuple[int, int, int]] = []
    malformed: list[str] = []
    candidates = [p for p in root.rglob("*") if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")]
    for p in sorted((p for p in candidates if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        parsed = parse_name(p.name)
        if parsed is None:
            malformed.append(p.relative_to(root).as_posix())
            continue
        files.append(p)
        rows.append(parsed)
    if malformed:
        warnings.warn(
            f"utkface: skipped {len(malformed)} image file(s) in {root} not named "
            f"<age>_<gender 0|1>_<race 0-4>_<date>.jpg, e.g. {malformed[0]}",
            UserWarning,
            stacklevel=3,
        )
    if not files:
        raise DataError(
            f"no UTKFace images in {root}: expected files named <age>_<gender>_<race>_<date>.jpg(.chip.jpg)"
        )
    if limit is not None:
        files, rows = files[:limit], rows[:limit]
    ids = [p.relative_to(root).as_posix() for p in files]
    key = {
        "version": _CACHE_VERSION,
        "folder": str(root.resolve()),
        "files": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "mtime_ns": max(p.stat().st_mtime_ns for p in files),
        "image_size": image_size,
    }
    images = cached_arrays(
        "utkface", key, lambda: {"images": read_images(files, size=image_size, desc="decoding UTKFace")}
    )["images"]
    table = np.array(rows, dtype=np.int64)
    return LabeledImages(
        images=images,
        labels={
            "age_bin": np.minimum(table[:, 0] // 10, len(AGE_BINS) - 1),
            "gender": table[:, 1],
            "race": table[:, 2],
        },
        classes={"age_bin": AGE_BINS, "gender": GENDERS, "race": RACES},
        source=f"utkface:{root}",
        default_task=None,
        ids=ids,
    )
