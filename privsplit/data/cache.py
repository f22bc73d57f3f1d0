"""A small on-disk cache of decoded image arrays (``.npz``, never pickle).

Decoding thousands of JPEGs takes seconds; reading them back from one uncompressed ``.npz`` takes
a fraction of that. Entries are keyed by a JSON description of everything the arrays depend on
(source folder, the size and mtime of its label file, image size, limit, loader version), so a changed
source or option simply misses and rebuilds. A cache that cannot be written only costs speed: loading
never fails because of it.

The cache is **off unless asked for**: decoded training images (faces, for CelebA) are private data and
are not copied anywhere silently. ``PRIVSPLIT_CACHE=DIR`` turns it on in ``DIR``; ``PRIVSPLIT_CACHE=on``
(or ``1``/``yes``/``true``) in ``~/.cache/privsplit``; unset, empty or ``off`` leaves it off. The folder
is created with mode 0700 and every entry is written with mode 0600 (an existing entry found with a wider
mode is narrowed when it is read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_ENV = "PRIVSPLIT_CACHE"
MAX_CACHE_BYTES = 2 * 1024**3  # least recently used entries beyond this are removed
_KEY_FIELD = "__cache_key__"


_OFF = ("", "off", "0", "none", "false", "no")
_ON = ("on", "1", "yes", "true")


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` (the default) when ``PRIVSPLIT_CACHE`` is unset, empty or ``off``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in _ON:
        return Path.home() / ".cache" / "privsplit"
    return Path(value).expanduser()


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
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return arrays
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # truncated or foreign: rebuild
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None


def _write(path: Path, text: str, arrays: Mapping[str, np.ndarray]) -> None:
    if any(a.dtype.hasobject for a in arrays.values()):  # npz could only pickle them
        log.warning("not caching %s: arrays of Python objects", path)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        _private_dir(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from the first byte
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays, **{_KEY_FIELD: np.array(text)})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: concurrent readers see the old file or the whole new one
        _prune(path.parent, keep=path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not write the dataset cache %s (%s); set %s to a writable folder", path, exc, CACHE_ENV)


def _private_dir(root: Path) -> None:
    """Create ``root`` with mode 0700 (an existing folder is left as the user set it)."""
    if not root.is_dir():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)


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
