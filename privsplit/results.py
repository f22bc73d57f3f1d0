"""One way to save a result: dataclass <-> dict, a schema-version check, an atomic write, one NaN/inf rule.

Every result file privsplit writes (run config/metrics, probe results, parity reports, latency and load
results, quickstart state and summaries, benchmark reports) goes through :func:`save_json` and is read
back with :func:`load_json`; arrays beside them go through :func:`save_npz`.

- :func:`to_dict` turns (nested, frozen) dataclasses, enums, tuples, mappings, paths and numpy scalars or
  arrays into plain JSON values; :func:`from_dict` builds a dataclass back from its type hints (nested
  dataclasses, enums, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, ``Path``).
- **Non-finite numbers**: NaN, +inf and -inf are written as ``null`` (``NaN``/``Infinity`` are not
  JSON; the dump runs with ``allow_nan=False`` so a value that slips past fails loudly). Reading back,
  ``null`` in a field typed ``float`` becomes NaN (the sign of an infinity is not kept); in a field
  typed ``float | None`` it stays ``None``.
- A file carries ``schema_version`` (and ``kind`` where given) first; loading checks both and raises
  :class:`~privsplit.errors.ResultError` naming the file, the version found and the one expected.
  Damaged JSON raises the same error naming the file, never a ``JSONDecodeError`` traceback.
- Writes are atomic: a temporary file in the same folder, flushed and fsynced, then ``os.replace``;
  the JSON text is built before the file is opened, so a value that cannot be written leaves the
  old file intact.

Torch-free and numpy-optional: the edge and the cloud use it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import json
import math
import os
import secrets
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from privsplit.errors import ConfigError, ResultError

T = TypeVar("T")

__all__ = [
    "to_dict",
    "from_dict",
    "dumps",
    "check_schema",
    "atomic_write",
    "save_json",
    "read_json",
    "load_json",
    "save_npz",
]


# ---- values -> JSON ---------------------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    """``obj`` as plain JSON values (dict/list/str/int/float/bool/None); non-finite floats become ``None``."""
    if obj is None or isinstance(obj, (bool, str)) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, enum.Enum):
        return to_dict(obj.value)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {_key(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if type(obj).__module__ == "numpy":  # numpy scalar or array, without importing numpy here
        return to_dict(obj.tolist())
    name = type(obj).__name__
    raise TypeError(f"cannot write a {name} to JSON: convert it to numbers, strings, lists or a dataclass")


def _key(key: Any) -> str:
    key = to_dict(key)
    if not isinstance(key, (str, int, float, bool)):
        raise TypeError(f"cannot use a {type(key).__name__} as a JSON object key")
    return key if isinstance(key, str) else json.dumps(key)


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """The JSON text of ``obj`` (through :func:`to_dict`), ending in a newline."""
    return json.dumps(to_dict(obj), indent=indent, allow_nan=False) + "\n"


# ---- JSON -> dataclasses ----------------------------------------------------------------------------
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # a name imported only for type checking: resolve field by field
        module = vars(sys.modules.get(cls.__module__, object()))
        hints = {}
        for f in dataclasses.fields(cls):
            try:
                # the class's own annotation text, evaluated as typing.get_type_hints would
                hints[f.name] = eval(f.type, module) if isinstance(f.type, str) else f.type  # noqa: S307
            except Exception:  # noqa: BLE001 - unresolvable: taken as is
                hints[f.name] = Any
        return hints


def from_dict(cls: type[T], data: Mapping[str, Any], *, strict: bool = False) -> T:
    """An instance of dataclass ``cls`` from ``data`` (what :func:`to_dict` wrote), converted by type hints.

    Keys ``cls`` does not have are ignored (derived figures written beside the fields), or raise
    :class:`~privsplit.errors.ConfigError` with ``strict``; missing keys take the field's default.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} needs a JSON object, got {type(data).__name__}")
    dataclass_type: Any = cls  # a dataclass; type[T] cannot say so to mypy
    known = {f.name: f for f in dataclasses.fields(dataclass_type) if f.init}
    if strict and set(data) - set(known):
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(set(data) - set(known))}")
    hints = _hints(dataclass_type)
    return cls(**{name: _convert(hints.get(name, Any), data[name]) for name in known if name in data})


def _convert(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if value is None:
            return None if len(options) < len(args) else _convert(options[0], value)
        if len(options) == 1:
            return _convert(options[0], value)
        if any(isinstance(value, a) for a in options if isinstance(a, type)):
            return value
        return _convert(options[0], value)
    if value is None:
        return math.nan if tp is float else None
    if isinstance(tp, type) and isinstance(value, tp):  # already built (a dataclass, an enum, a Path)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin in (list, collections.abc.Sequence):
        return [_convert(args[0] if args else Any, v) for v in value]
    if origin in (dict, collections.abc.Mapping):
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k): _convert(vt, v) for k, v in value.items()}
    if tp is float:
        return float(value)
    if tp is int and not isinstance(value, bool):
        return int(value)
    if tp is Path:
        return Path(value)
    if getattr(tp, "__module__", "") == "numpy" and getattr(tp, "__name__", "") == "ndarray":
        import numpy as np

        return np.asarray(value)
    return value


# ---- schema -----------------------------------------------------------------------------------------
def check_schema(data: Any, *, version: int, kind: str | None = None, source: str = "result", hint: str = "") -> dict:
    """``data`` when it is a JSON object of ``version`` (and ``kind``), else a :class:`ResultError`."""
    fix = f": {hint}" if hint else ""
    if not isinstance(data, Mapping):
        raise ResultError(f"{source} holds a JSON {type(data).__name__}, not an object{fix}")
    if kind is not None and data.get("kind") != kind:
        raise ResultError(f"{source} is a {data.get('kind')!r} result, expected {kind!r}{fix}")
    found = data.get("schema_version")
    if found != version:
        raise ResultError(f"{source} has schema version {found!r}, expected {version}{fix}")
    return dict(data)


# ---- files ------------------------------------------------------------------------------------------
def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``content`` (text, bytes, or a function writing to a binary file) to ``path`` atomically.

    Readers see the old file or the whole new one, never a partial one; on any error the old file is
    left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode() if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_json(
    path: str | Path, obj: Any, *, version: int | None = None, kind: str | None = None, indent: int | None = 2
) -> Path:
    """Write ``obj`` (a dataclass or a dict) as JSON, ``schema_version``/``kind`` first when given."""
    body = to_dict(obj)
    if version is not None or kind is not None:
        if not isinstance(body, dict):
            raise TypeError(f"a versioned result must be a JSON object, got {type(body).__name__}")
        head: dict[str, Any] = {"schema_version": version} if version is not None else {}
        if kind is not None:
            head["kind"] = kind
        body = {**head, **{k: v for k, v in body.items() if k not in head}}
    return atomic_write(path, dumps(body, indent=indent))


def read_json(path: str | Path, *, what: str = "result", hint: str = "") -> Any:
    """The parsed JSON of ``path``; a missing or damaged file is a one-line :class:`ResultError`."""
    path = Path(path)
    fix = f": {hint}" if hint else ""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultError(f"{path} not found ({what}){fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path}: cannot read {what} ({exc}){fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}){fix}") from None


def load_json(
    path: str | Path,
    cls: type[T] | None = None,
    *,
    version: int | None = None,
    kind: str | None = None,
    what: str = "result",
    hint: str = "",
) -> Any:
    """Read ``path``, check its ``schema_version`` (and ``kind``), and return the dict or a ``cls`` built from it."""
    data = read_json(path, what=what, hint=hint)
    if version is not None:
        data = check_schema(data, version=version, kind=kind, source=str(path), hint=hint)
    if cls is None:
        return data
    try:
        return from_dict(cls, data)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ResultError(f"{path} does not hold a valid {what} ({exc}){f': {hint}' if hint else ''}") from None


def save_npz(path: str | Path, arrays: Mapping[str, Any], *, compressed: bool = True) -> Path:
    """Write ``arrays`` to an ``.npz`` atomically (never pickled objects)."""
    import numpy as np

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    objects = [k for k, v in arrays.items() if v.dtype.hasobject]
    if objects:
        raise TypeError(f"arrays {objects} hold Python objects, which npz could only pickle: convert them to numbers")
    save = np.savez_compressed if compressed else np.savez
    return atomic_write(path, lambda fh: save(fh, **arrays))
