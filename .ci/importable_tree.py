"""Lay out the package as it is installed, for tools that walk folders instead of importing.

pyproject maps ``privsplit.edge`` to ``edge/`` (and export, cloud, proto alike); an editable install
resolves that with an import hook that import-linter (grimp) and mypy do not use, so they would see
``privsplit`` without its side packages. This copies every mapped folder's Python sources (and type
stubs) to ``DEST/privsplit/...`` as a wheel would install them; point PYTHONPATH or MYPYPATH at DEST.

Usage: python .ci/importable_tree.py DEST   (DEST must be empty or absent)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip itself uses
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = (".py", ".pyi")


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """Import name -> source folder for every package pyproject declares."""
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapping = setuptools.get("package-dir", {})
    out = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        # the longest mapped prefix decides the folder, as setuptools does
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping:
                out[package] = pyproject.parent / mapping[prefix] / Path(*parts[cut:])
                break
        else:
            out[package] = pyproject.parent / Path(*parts)
    return out


def build(dest: Path, pyproject: Path = ROOT / "pyproject.toml") -> list[Path]:
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"importable_tree: {dest} is not empty; give an empty or new folder")
    written = []
    for package, source in sorted(package_dirs(pyproject).items()):
        if not (source / "__init__.py").is_file():
            raise SystemExit(f"importable_tree: package {package} has no {source / '__init__.py'}; fix pyproject")
        target = dest / Path(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix in SUFFIXES:
                shutil.copy2(path, target / path.name)
                written.append(target / path.name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python .ci/importable_tree.py DEST")
    files = build(Path(sys.argv[1]))
    print(f"importable_tree: {len(files)} files under {sys.argv[1]}")
