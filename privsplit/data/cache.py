"""A small on-disk cache of decoded image arrays (``.npz``, never pickle).

Decoding thousands of JPEGs takes seconds; reading them back from one uncompressed ``.npz`` takes
a fraction of that. Entries are keyed by a JSON description of everything the arrays depend on
(source folder, the size and mtime of its label file, image size, limit, loader version), so a changed
source or option simply misses and rebuilds. The cache lives in ``$PRIVSPLIT_CACHE`` or
``~/.cache/privsplit``; ``PRIVSPLIT_CACHE=off`` turns it off. A cache that cannot be written only
costs speed: loading never fails because of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from privsplit.results import save_npz

log = logging.getLogger(__name__)

CACHE_ENV = "PRIVSPLIT_CACHE"
MAX_CACHE_BYTES = 2 * 1024**3  # least recently used entries beyond this are removed
_KEY_FIELD = "__cache_key__"


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``PRIVSPLIT_CACHE`` is ``off``/``0``/``none``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false", "no"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "privsplit"


def file_stamp(path: Path) -> dict[str, int]:
    """Size and modification time of ``path``: the part of a key that notices edits."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path(kind: str, key: Mapping) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(_key_text(kind, key).encode()).hexdigest()[:24]
    return root / f"{kind}-{digest}.npz"


def cached_arrays(kind: str, key: Mapping, build: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays stored under ``(kind, key)``, or ``build()`` them and store them.

    Arrays must be numeric or fixed-width strings (they are read back with ``allow_pickle=False``).
    """
    path = cache_path(kind, key)
    text = _key_text(kind, key)
    if path is not None and path.is_file():
        hit = _read(path, text)
        if hit is not None:
            log.debug("cache hit %s", path)
            return hit
    arrays = {name: np.asarray(a) for name, a in build().items()}
    if path is not None:
        log.debug("cache miss, writing %s", path)
        _write(path, text, arrays)
    return arrays


def _key_text(kind: str, key: Mapping) -> str:
    return json.dumps({"kind": kind, **key}, sort_keys=True, default=str)


def _read(path: Path, text: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if _KEY_FIELD not in z.files or str(z[_KEY_FIELD]) != text:
                return None
            arrays = {name: z[name] for name in z.files if name != _KEY_FIELD}
        os.utime(path)  # mark as recently used
        return arrays
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # truncated or foreign: rebuild
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None


def _write(path: Path, text: str, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        # atomic: concurrent readers see the old file or the whole new one
        save_npz(path, {**arrays, _KEY_FIELD: np.array(text)}, compressed=False)
        _prune(path.parent, keep=path)
    except OSError as exc:
        log.warning("could not write the dataset cache %s (%s); set %s to a writable folder", path, exc, CACHE_ENV)


def _prune(root: Path, *, keep: Path) -> None:
    entries = []
    for p in root.glob("*.npz"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= MAX_CACHE_BYTES:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            total -= size
