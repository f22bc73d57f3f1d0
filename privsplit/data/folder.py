"""``folder:<dir>``: any images plus a ``labels.csv`` naming them.

``labels.csv`` has a header row. The column ``file`` (or ``filename`` / ``image``; otherwise the
first column) holds image paths relative to the folder; every other column is a label whose sorted
distinct values become its classes (numerically sorted when every value is a number). With a single
label column, that column is the default task. Images are read as RGB, centre-cropped to a square
and resized; decoded arrays are cached like CelebA's.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from privsplit.data.cache import cached_arrays, file_stamp
from privsplit.data.dataset import LabeledImages
from privsplit.data.images import read_images
from privsplit.data.spec import register_loader
from privsplit.errors import DataError

LABELS_FILE = "labels.csv"
FILE_COLUMNS = ("file", "filename", "image")
_CACHE_VERSION = 1


def sort_classes(values: set[str]) -> tuple[str, ...]:
    """Distinct values in order: numerically when all are numbers, else as text."""
    try:
        return tuple(sorted(values, key=lambda v: (float(v), v)))
    except ValueError:
        return tuple(sorted(values))


def file_column_rule(header: list[str], file_col: int) -> str:
    """Why ``header[file_col]`` was taken as the column of image paths (for error messages)."""
    if header[file_col].lower() in FILE_COLUMNS:
        return f"the file column {header[file_col]!r}"
    return (
        f"column {header[file_col]!r}, taken as the file column because no column is named "
        f"{' / '.join(FILE_COLUMNS)} (it is the first column)"
    )


def read_labels_csv(path: Path, *, limit: int | None = None) -> tuple[list[str], dict[str, list[str]], str]:
    """The image paths, the raw values of every label column (first ``limit`` rows) and how the file column
    was chosen (:func:`file_column_rule`)."""
    if not path.is_file():
        raise DataError(f"{path} not found: a folder dataset needs a labels.csv (header: file,<label>,...)")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path} is empty: it needs a header row and one row per image")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{path}: header names must be distinct and non-empty, got {header}")
    lower = [h.lower() for h in header]
    file_col = next((lower.index(c) for c in FILE_COLUMNS if c in lower), 0)
    label_cols = [i for i in range(len(header)) if i != file_col]
    if not label_cols:
        rule = file_column_rule(header, file_col)
        raise DataError(f"{path}: no label columns besides {rule}; add e.g. a 'class' column")
    body = rows[1:] if limit is None else rows[1 : limit + 1]
    files: list[str] = []
    values: dict[str, list[str]] = {header[i]: [] for i in label_cols}
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, row {n}: {len(row)} fields for the {len(header)} columns {header}")
        cells = [c.strip() for c in row]
        for i in (file_col, *label_cols):
            if not cells[i]:
                raise DataError(f"{path}, row {n}: column {header[i]!r} is empty")
        files.append(cells[file_col])
        for i in label_cols:
            values[header[i]].append(cells[i])
    return files, values, file_column_rule(header, file_col)


@register_loader("folder", default_image_size=64, needs_path=True, help="images + labels.csv (file,<label>,...)")
def load_folder(path: Path | None, *, image_size: int, limit: int | None) -> LabeledImages:
    if path is None or not Path(path).is_dir():
        raise DataError(f"dataset folder {path} not found")
    root = Path(path)
    labels_path = root / LABELS_FILE
    files, raw, file_rule = read_labels_csv(labels_path, limit=limit)
    if not files:
        raise DataError(f"{labels_path} lists no images")
    paths = [root / f for f in files]
    missing = [f for f, p in zip(files, paths) if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(files)} image(s) named in {file_rule} of {labels_path} not found in {root}, "
            f"e.g. {root / missing[0]}: put the image paths (relative to {root}) in a column named 'file'"
        )
    key = {
        "version": _CACHE_VERSION,
        "folder": str(root.resolve()),
        "labels": file_stamp(labels_path),
        "image_mtime_ns": max(p.stat().st_mtime_ns for p in paths),
        "image_size": image_size,
        "limit": limit,
    }
    images = cached_arrays(
        "folder", key, lambda: {"images": read_images(paths, size=image_size, desc=f"decoding {root.name}")}
    )["images"]
    labels: dict[str, np.ndarray] = {}
    classes: dict[str, tuple[str, ...]] = {}
    for name, column in raw.items():
        classes[name] = sort_classes(set(column))
        index = {c: i for i, c in enumerate(classes[name])}
        labels[name] = np.array([index[v] for v in column], dtype=np.int64)
    return LabeledImages(
        images=images,
        labels=labels,
        classes=classes,
        source=f"folder:{root}",
        default_task=next(iter(labels)) if len(labels) == 1 else None,
        ids=files,
    )
