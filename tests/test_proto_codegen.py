"""The committed protocol code: fresh, importable on this protobuf, and wire-compatible with Triton's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from privsplit.proto import codegen


def test_lock_matches_sources_and_generated_files():
    reasons = codegen.stale_reasons(regenerate=False)
    assert reasons == [], "generated code is stale: " + "; ".join(reasons) + " (run python -m privsplit.proto.codegen)"


def test_lock_detects_an_edited_source(tmp_path, monkeypatch):
    # Copy the package's proto tree, edit the .proto, and point the checker at the copy.
    import shutil

    copy = tmp_path / "proto"
    shutil.copytree(codegen.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    src = copy / "inference" / "open_inference_grpc.proto"
    src.write_text(src.read_text().replace("bool live = 1;", "bool live = 1;\n  string note = 2;"))
    monkeypatch.setattr(codegen, "PACKAGE_ROOT", copy)
    monkeypatch.setattr(codegen, "LOCK", copy / "codegen.lock.json")
    reasons = codegen.stale_reasons(regenerate=False)
    assert reasons == ["inference/open_inference_grpc.proto: source changed since the last codegen"]
    (copy / "inference" / "open_inference_grpc_pb2.pyi").write_text("# edited by hand\n")
    assert any(
        "open_inference_grpc_pb2.pyi: generated file differs" in r for r in codegen.stale_reasons(regenerate=False)
    )


def _pinned_generator_installed() -> bool:
    if importlib.util.find_spec("grpc_tools") is None:
        return False
    from importlib.metadata import version

    return version("grpcio-tools") == codegen.GRPCIO_TOOLS


@pytest.mark.skipif(
    not _pinned_generator_installed(),
    reason=f"byte-exact regeneration needs grpcio-tools=={codegen.GRPCIO_TOOLS} (pip install --no-deps)",
)
def test_regenerating_changes_no_byte():
    assert codegen.stale_reasons(regenerate=True) == []


def test_gencode_imports_on_protobuf_6_31_and_later():
    from google.protobuf import __version__ as pb_version

    from privsplit.proto.inference import open_inference_grpc_pb2 as pb

    header = (codegen.PACKAGE_ROOT / "inference" / "open_inference_grpc_pb2.py").read_text().splitlines()[:6]
    assert "# Protobuf Python Version: 6.31.1" in header  # gencode 6.31.1 runs on runtime >= 6.31.1, incl. 7.x
    assert int(pb_version.split(".")[0]) >= 6
    assert pb.DESCRIPTOR.name == "privsplit/proto/inference/open_inference_grpc.proto"
    assert pb.DESCRIPTOR.package == "inference"
    assert (codegen.PACKAGE_ROOT / "inference" / "open_inference_grpc_pb2.pyi").is_file()


_DUMP = r"""
import json, sys
mod = sys.argv[1]
import importlib
pb = importlib.import_module(mod)
def dump(d):
    out = {"fields": {f.name: [f.number, f.type, f.label if hasattr(f, "label") else None,
                                f.message_type.full_name if f.message_type else None,
                                f.containing_oneof.name if f.containing_oneof else None] for f in d.fields}}
    for n in d.nested_types:
        out[n.name] = dump(n)
    return out
names = ["ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse", "ModelReadyRequest",
         "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse", "ModelMetadataRequest",
         "ModelMetadataResponse", "ModelInferRequest", "ModelInferResponse", "ModelStreamInferResponse",
         "InferParameter", "InferTensorContents"]
svc = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
methods = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
           "ModelStreamInfer"]
print(json.dumps({
    "service": svc.full_name,
    "messages": {n: dump(pb.DESCRIPTOR.message_types_by_name[n]) for n in names},
    "methods": {m: [svc.methods_by_name[m].input_type.full_name, svc.methods_by_name[m].output_type.full_name,
                    svc.methods_by_name[m].client_streaming, svc.methods_by_name[m].server_streaming] for m in methods},
}))
"""


def _descriptor_dump(module: str) -> dict:
    # Each in its own interpreter: both files define inference.* messages, which one process cannot hold twice.
    proc = subprocess.run([sys.executable, "-c", _DUMP, module], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient not installed (pip install 'privsplit[dev]')"
)
def test_wire_compatible_with_the_triton_client_stubs():
    ours = _descriptor_dump("privsplit.proto.inference.open_inference_grpc_pb2")
    triton = _descriptor_dump("tritonclient.grpc.service_pb2")
    assert ours["service"] == triton["service"] == "inference.GRPCInferenceService"
    assert ours["methods"] == triton["methods"]
    for name, desc in triton["messages"].items():
        assert ours["messages"][name] == desc, f"message {name} differs from Triton's"
