"""The Triton model repository of a cloud bundle (``privsplit export --triton``).

No ``tritonserver`` binary runs here, so the repository is checked the two ways that can run:
every ``config.pbtxt`` is parsed with Triton's own ``ModelConfig`` protobuf (from tritonclient) and checked
field by field, including the consistency rules Triton applies when it loads an ensemble; and the
ensemble's steps run in order with onnxruntime on the int8 features a device sends, against what
``privsplit serve`` answers over real gRPC for the same requests.
"""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_cloud_support import wire_features

from privsplit.bundle import BundleKind, load_bundle
from privsplit.cli.main import main
from privsplit.cloud import BatchConfig, ServeConfig, create_server
from privsplit.errors import ConfigError, ExportError
from privsplit.export.triton import MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US, write_triton_repository
from privsplit.export.triton_config import model_config_pb2, read_config
from privsplit.proto import InferResponse, Prediction, features_request
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

_ONNX_TYPES = {"TYPE_INT8": "tensor(int8)", "TYPE_FP32": "tensor(float)", "TYPE_INT64": "tensor(int64)"}
ROW_SPLITS = (1, 7, 16, 40)  # request sizes: 64 holdout rows in four requests, as devices would batch them


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=sum(ROW_SPLITS))


@pytest.fixture(scope="module", params=["purifier", "no-purifier"])
def served(request, bundles, tmp_path_factory):
    """(repository, bundle, server): the Triton repository of a cloud bundle and `privsplit serve` on it."""
    with_purifier = request.param == "purifier"
    bundle_dir = bundles.cloud if with_purifier else bundles.cloud_plain
    trust = bundles.trust_key if with_purifier else None
    cloud = load_bundle(bundle_dir, trust_key=trust, kind=BundleKind.CLOUD)
    assert (cloud.manifest["purifier"] is not None) == with_purifier
    repo = write_triton_repository(cloud, tmp_path_factory.mktemp("triton") / "triton")
    config = ServeConfig(bundle=bundle_dir, port=0, trust_key=trust, batch=BatchConfig(max_batch=16))
    server, _ = create_server(config)
    with server:
        yield repo, cloud, server


def _configs(repo) -> dict:
    return {name: read_config(repo.config_path(name)) for name in (repo.ensemble, repo.server, repo.head)}


def _dtype(value: int) -> str:
    return model_config_pb2().DataType.Name(value)


def _full_shape(config, tensor) -> list[int]:
    """The shape a request or response has: the batch dimension first when the model batches."""
    return ([-1] if config.max_batch_size > 0 else []) + list(tensor.dims)


def run_ensemble(repo, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Triton's ensemble scheduler, step by step: map ensemble tensors in, run the step's model, map out."""
    config = read_config(repo.config_path(name))
    assert config.platform == "ensemble"
    tensors = dict(inputs)
    for step in config.ensemble_scheduling.step:
        session = ort.InferenceSession(str(repo.onnx_path(step.model_name)), providers=["CPUExecutionProvider"])
        feeds = {model_input: tensors[tensor] for model_input, tensor in step.input_map.items()}
        wanted = list(step.output_map)
        tensors.update({step.output_map[n]: v for n, v in zip(wanted, session.run(wanted, feeds), strict=True)})
    return {out.name: tensors[out.name] for out in config.output}


def test_every_config_parses_with_tritons_protobuf_and_has_the_expected_fields(served):
    repo, cloud, _ = served
    (c, h, w), k = cloud.features.shape, len(cloud.classes)
    configs = _configs(repo)
    assert sorted(p.name for p in repo.root.iterdir()) == sorted(configs)
    ens, server, head = configs[repo.ensemble], configs[repo.server], configs[repo.head]
    assert repo.ensemble == "privsplit" and server.name == "privsplit_server"
    assert head.name == ("privsplit_purifier" if cloud.manifest["purifier"] else "privsplit_label")

    assert (ens.name, ens.platform, ens.max_batch_size) == ("privsplit", "ensemble", 0)
    assert [(t.name, _dtype(t.data_type), list(t.dims)) for t in ens.input] == [
        ("features", "TYPE_INT8", [-1, c, h, w])
    ]
    assert [(t.name, _dtype(t.data_type), list(t.dims)) for t in ens.output] == [
        ("probs", "TYPE_FP32", [-1, k]),
        ("label", "TYPE_INT64", [-1]),
    ]
    assert ens.parameters["privsplit_bundle_version"].string_value == cloud.version
    hashes = ens.parameters["privsplit_accepted_encoder_hashes"].string_value.split(",")
    assert hashes == cloud.manifest["accepted_encoder_hashes"]
    assert float(ens.parameters["privsplit_wire_scale"].string_value) == cloud.features.scale
    assert (ens.parameters["privsplit_wire_zero_point"].string_value) == str(cloud.features.zero_point)
    assert [(s.model_name, s.model_version) for s in ens.ensemble_scheduling.step] == [
        (repo.server, -1),
        (repo.head, -1),
    ]
    assert (repo.root / repo.ensemble / "1").is_dir() and not any((repo.root / repo.ensemble / "1").iterdir())

    # the server step batches what many devices send: the `privsplit serve` defaults, dims without the batch
    serve = BatchConfig()
    assert (server.backend, server.max_batch_size) == ("onnxruntime", MAX_BATCH_SIZE)
    assert MAX_BATCH_SIZE == serve.max_request_batch and MAX_QUEUE_DELAY_US == round(serve.max_delay_ms * 1000)
    assert server.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert server.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US
    assert [(t.name, _dtype(t.data_type), list(t.dims)) for t in server.input] == [("features", "TYPE_INT8", [c, h, w])]
    assert [(t.name, _dtype(t.data_type), list(t.dims)) for t in server.output] == [("probs", "TYPE_FP32", [k])]
    # the last step does not batch: a batching model could only return label as [B, 1]
    assert (head.backend, head.max_batch_size) == ("onnxruntime", 0)
    assert [_dtype(t.data_type) for t in head.output] == ["TYPE_FP32", "TYPE_INT64"]
    assert [list(t.dims) for t in head.output] == [[-1, k], [-1]]


def test_the_ensemble_wiring_passes_tritons_load_checks(served):
    """What Triton checks when it loads the repository: every step input mapped once from a tensor already
    produced, outputs that exist, and tensor types and shapes consistent across steps (a batching model's
    dims compared with the batch dimension prepended); and each ONNX file's I/O as its config says."""
    repo, _, _ = served
    configs = _configs(repo)
    ens = configs[repo.ensemble]
    known = {t.name: (t.data_type, _full_shape(ens, t)) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert sorted(step.input_map) == sorted(t.name for t in model.input)
        for t in model.input:
            assert known[step.input_map[t.name]] == (t.data_type, _full_shape(model, t)), (step.model_name, t.name)
        outputs = {t.name: t for t in model.output}
        assert set(step.output_map) <= set(outputs)
        for name, tensor in step.output_map.items():
            assert tensor not in known, f"{tensor} produced twice"
            known[tensor] = (outputs[name].data_type, _full_shape(model, outputs[name]))
        session = ort.InferenceSession(str(repo.onnx_path(step.model_name)), providers=["CPUExecutionProvider"])
        for args, declared in ((session.get_inputs(), model.input), (session.get_outputs(), model.output)):
            onnx_io = {a.name: (a.type, [d if isinstance(d, int) else -1 for d in a.shape]) for a in args}
            assert onnx_io == {t.name: (_ONNX_TYPES[_dtype(t.data_type)], _full_shape(model, t)) for t in declared}
    for out in ens.output:
        assert known[out.name] == (out.data_type, _full_shape(ens, out)), out.name


def test_the_server_graph_dequantizes_with_the_bundles_scale_and_zero_point(served):
    repo, cloud, _ = served
    graph = onnx.load(str(repo.onnx_path(repo.server))).graph
    first = graph.node[0]
    assert first.op_type == "DequantizeLinear" and first.input[0] == "features"
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scale, zero_point = consts[first.input[1]], consts[first.input[2]]
    assert scale.dtype == np.float32 and scale == np.float32(cloud.features.scale)
    assert zero_point.dtype == np.int8 and int(zero_point) == cloud.features.zero_point
    assert [i.name for i in graph.input if i.name not in consts] == ["features"]  # no float input left


def test_the_ensemble_answers_what_privsplit_serve_answers(served, wire):
    repo, _, server = served
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=repo.ensemble))
    ens = read_config(repo.config_path(repo.ensemble))
    ours = [(t.name, t.datatype, list(t.shape)) for t in [*meta.inputs, *meta.outputs]]
    assert ours == [
        (t.name, _dtype(t.data_type).removeprefix("TYPE_"), list(t.dims)) for t in [*ens.input, *ens.output]
    ]

    start, got_probs, got_labels, want_probs, want_labels = 0, [], [], [], []
    for rows in ROW_SPLITS:
        q = wire.features[start : start + rows]
        start += rows
        request = features_request(q, encoder_hash=wire.encoder_hash, scale=wire.scale, zero_point=wire.zero_point)
        # Triton refuses request-level parameters other than int64, bool and string (a double scale would be
        # INVALID_ARGUMENT); the device puts scale and zero point on the tensor, which Triton does not read
        assert all(isinstance(v, (bool, int, str)) for v in request.parameters.values())
        assert set(request.inputs[0].parameters) == {"scale", "zero_point"}
        reply = Prediction.from_response(InferResponse.from_proto(stub.ModelInfer(request.to_proto(), timeout=30)))
        triton = run_ensemble(repo, repo.ensemble, {"features": q})
        assert set(triton) == {"probs", "label"}
        assert triton["probs"].dtype == np.float32 and triton["probs"].shape == reply.probs.shape
        assert triton["label"].dtype == np.int64 and triton["label"].shape == reply.label.shape == (rows,)
        got_probs.append(triton["probs"]), got_labels.append(triton["label"])
        want_probs.append(reply.probs), want_labels.append(reply.label)
    channel.close()
    probs, labels = np.concatenate(got_probs), np.concatenate(got_labels)
    np.testing.assert_allclose(probs, np.concatenate(want_probs), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, np.concatenate(want_labels))
    assert (labels == wire.labels).mean() > 0.5  # a trained model's answers, not a constant
    assert len(set(labels.tolist())) > 3


def test_config_parsing_refuses_what_triton_would_refuse(served, tmp_path):
    repo, cloud, _ = served
    bad = tmp_path / "config.pbtxt"
    bad.write_text(repo.config_path(repo.server).read_text() + "\nmax_batch_sise: 4\n")
    with pytest.raises(ExportError, match="not a Triton model configuration"):
        read_config(bad)
    with pytest.raises(ConfigError, match="already exists"):
        write_triton_repository(cloud, repo.root)
    with pytest.raises(ConfigError, match="--triton-model-name"):
        write_triton_repository(cloud, tmp_path / "other", model_name="a/b")


@pytest.mark.slow  # one real export (onnx-fp32 only)
def test_cli_export_writes_the_repository(bundles, tmp_path, capsys):
    out = tmp_path / "export"
    args = ["export", str(bundles.run), "--out", str(out), "--formats", "onnx-fp32", "--no-probe", "--quiet"]
    args += ["--calibration", "16", "--holdout-limit", "32"]
    for bad in (["--triton", "--triton-model-name", "a/b"], ["--triton-model-name", "digits"]):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--triton-model-name" in err and not out.exists()
    assert main([*args, "--triton", "--triton-model-name", "digits"]) == 0
    assert f"triton       {out / 'triton'} (ensemble 'digits')" in capsys.readouterr().out
    cloud = load_bundle(out / "cloud", kind=BundleKind.CLOUD)
    configs = {p.name: read_config(p / "config.pbtxt") for p in (out / "triton").iterdir()}
    assert sorted(configs) == ["digits", "digits_purifier", "digits_server"]
    steps = [s.model_name for s in configs["digits"].ensemble_scheduling.step]
    assert steps == ["digits_server", "digits_purifier"]
    assert configs["digits"].parameters["privsplit_bundle_version"].string_value == cloud.version
    hashes = configs["digits"].parameters["privsplit_accepted_manifest_hashes"].string_value
    assert hashes.split(",") == cloud.manifest["accepted_manifest_hashes"]  # the edge manifest's sha256, as served
    assert hashes == load_bundle(out / "edge", kind=BundleKind.EDGE).manifest_sha256
    for name in ("edge", "cloud", "parity.json"):  # a repository left alone still blocks a new export
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    assert main(args) == 2 and "triton already exists" in capsys.readouterr().err


def test_without_tritonclient_export_triton_names_the_extra_before_converting(bundles, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.delitem(sys.modules, "tritonclient.grpc.model_config_pb2", raising=False)
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # what `import tritonclient` finds when not installed
    out = tmp_path / "export"
    assert main(["export", str(bundles.run), "--out", str(out), "--formats", "onnx-fp32", "--triton", "--quiet"]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privsplit[triton]" in err and "tritonclient" in err
    assert not out.exists()  # refused before any conversion
