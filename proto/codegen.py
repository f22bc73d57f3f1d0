"""Regenerate (or check) the committed protobuf / gRPC Python code: ``python -m privsplit.proto.codegen``.

Each ``.proto`` under this package is compiled with its import path equal to its installed place
(``privsplit/proto/inference/open_inference_grpc.proto``), so the generated ``_pb2``, ``_pb2_grpc`` and
``.pyi`` files import as ``privsplit.proto.inference.*``. The generator is pinned: grpcio-tools
1.80.0 bundles protoc 31.1, whose gencode imports on protobuf 6.31+ and 7.x alike (the edge and
cloud extras accept both; tritonclient still asks protobuf 6). Its metadata asks protobuf<7, so install
it beside a protobuf 7 runtime with ``pip install --no-deps grpcio-tools==1.80.0`` (protoc does not use
the protobuf runtime).

``codegen.lock.json`` records the sha256 of every source and generated file; ``--check`` (and the test
suite) fails when a source changed without regeneration or a generated file was edited by hand, and,
with the pinned generator installed, when regenerating would change a byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from privsplit.errors import ConfigError, MissingDependencyError

GRPCIO_TOOLS = "1.80.0"
PACKAGE_ROOT = Path(__file__).resolve().parent  # installed as privsplit/proto
IMPORT_PREFIX = Path("privsplit") / "proto"
LOCK = PACKAGE_ROOT / "codegen.lock.json"
LOCK_SCHEMA_VERSION = 1
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def sources() -> list[Path]:
    """The ``.proto`` files, relative to this package."""
    return sorted(p.relative_to(PACKAGE_ROOT) for p in PACKAGE_ROOT.rglob("*.proto"))


def outputs_of(source: Path) -> list[Path]:
    stem = source.with_suffix("")
    return [stem.parent / f"{stem.name}{suffix}" for suffix in SUFFIXES]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _protoc():
    try:
        from importlib.metadata import version

        from grpc_tools import protoc
    except ImportError:
        raise MissingDependencyError(
            f"grpcio-tools is not installed: pip install --no-deps grpcio-tools=={GRPCIO_TOOLS}"
        ) from None
    installed = version("grpcio-tools")
    if installed != GRPCIO_TOOLS:
        raise MissingDependencyError(
            f"grpcio-tools {installed} is installed but the code is generated with {GRPCIO_TOOLS} (protoc 31.1, "
            f"gencode that imports on protobuf 6.31+ and 7.x): pip install --no-deps grpcio-tools=={GRPCIO_TOOLS}"
        )
    return protoc


def generate(out_dir: Path) -> dict[Path, bytes]:
    """Compile every source into ``out_dir``; return ``{path relative to this package: bytes}``."""
    protoc = _protoc()
    with tempfile.TemporaryDirectory(prefix="privsplit-protoc-") as tmp:
        include = Path(tmp) / "include"
        gen = Path(tmp) / "gen"
        gen.mkdir()
        staged = []
        for src in sources():
            dest = include / IMPORT_PREFIX / src
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PACKAGE_ROOT / src, dest)
            staged.append((IMPORT_PREFIX / src).as_posix())
        args = [
            "protoc",
            f"-I{include}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
            *staged,
        ]
        if protoc.main(args) != 0:
            raise ConfigError(f"protoc failed on {', '.join(staged)} (see its message above)")
        result = {}
        for src in sources():
            for rel in outputs_of(src):
                result[rel] = (gen / IMPORT_PREFIX / rel).read_bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel, data in result.items():
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_bytes(data)
    return result


def lock_contents() -> dict:
    """What ``codegen.lock.json`` must say for the files now in the package."""
    return {
        "schema_version": LOCK_SCHEMA_VERSION,
        "generator": f"grpcio-tools=={GRPCIO_TOOLS}",
        "sources": {src.as_posix(): _sha(PACKAGE_ROOT / src) for src in sources()},
        "outputs": {
            out.as_posix(): _sha(PACKAGE_ROOT / out) if (PACKAGE_ROOT / out).is_file() else None
            for src in sources()
            for out in outputs_of(src)
        },
    }


def stale_reasons(*, regenerate: bool) -> list[str]:
    """Why the committed code is stale (empty: fresh). ``regenerate`` also diffs a fresh protoc run."""
    reasons = []
    if not LOCK.is_file():
        return [f"{LOCK.name} missing: run python -m privsplit.proto.codegen"]
    recorded = json.loads(LOCK.read_text())
    current = lock_contents()
    for key in ("sources", "outputs"):
        for name in sorted(set(recorded.get(key, {})) | set(current[key])):
            if recorded.get(key, {}).get(name) != current[key].get(name):
                what = (
                    "source changed since the last codegen"
                    if key == "sources"
                    else "generated file differs from the one codegen wrote"
                )
                reasons.append(f"{name}: {what}")
    if regenerate:
        with tempfile.TemporaryDirectory(prefix="privsplit-codegen-check-") as tmp:
            for rel, data in generate(Path(tmp)).items():
                path = PACKAGE_ROOT / rel
                if not path.is_file() or path.read_bytes() != data:
                    reasons.append(f"{rel.as_posix()}: regenerating with grpcio-tools {GRPCIO_TOOLS} changes it")
    return reasons


def regenerate() -> list[Path]:
    """Write the generated files next to their sources and refresh the lock; return the files written."""
    written = []
    with tempfile.TemporaryDirectory(prefix="privsplit-codegen-") as tmp:
        for rel, data in generate(Path(tmp)).items():
            (PACKAGE_ROOT / rel).write_bytes(data)
            written.append(PACKAGE_ROOT / rel)
    LOCK.write_text(json.dumps(lock_contents(), indent=2, sort_keys=True) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m privsplit.proto.codegen", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the committed code is fresh (exit 1 if stale)"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            reasons = stale_reasons(regenerate=True)
            for reason in reasons:
                print(f"stale: {reason}", file=sys.stderr)
            print("generated code is fresh" if not reasons else "run: python -m privsplit.proto.codegen")
            return 1 if reasons else 0
        for path in regenerate():
            print(f"wrote {path}")
        print(f"wrote {LOCK}")
    except (MissingDependencyError, ConfigError) as exc:
        print(f"codegen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
