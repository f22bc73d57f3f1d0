"""The serving path under hostile or careless clients, over real gRPC on port 0: per-device tokens revoked
while the server runs, the per-identity rate limit, submit after stop, a stream that writes and never reads
(bounded backlog, backpressure), and load figures kept out of replies unless the operator asks."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np
import pytest
from test_cloud_support import wire_features

from privsplit.cli.main import main
from privsplit.cloud import BatchConfig, DynamicBatcher, ServeConfig, create_server
from privsplit.cloud.config import RateLimit
from privsplit.proto import InferResponse, StreamInferResponse, features_request
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
from privsplit.proto.status import Code, ProtocolError

REVOKE_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=8)


def _request(wire, rows=slice(0, 1), request_id=""):
    return features_request(
        wire.features[rows],
        encoder_hash=wire.encoder_hash,
        scale=wire.scale,
        zero_point=wire.zero_point,
        request_id=request_id,
    ).to_proto()


def _auth(token: str):
    return (("authorization", f"Bearer {token}"),)


def _add(tokens, device: str, out) -> str:
    assert main(["devices", "add", "--id", device, "--tokens", str(tokens), "--out", str(out)]) == 0
    return out.read_text().strip()


def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_revoked_device_is_refused_while_the_server_runs(bundles, wire, tmp_path, capsys):
    tokens = tmp_path / "devices.txt"
    cam1, cam2 = _add(tokens, "cam-01", tmp_path / "cam1"), _add(tokens, "cam-02", tmp_path / "cam2")
    text = tokens.read_text()
    assert cam1 not in text and cam2 not in text and "cam-01 " in text  # the file holds digests, not tokens
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0, device_tokens=tokens, token="shared-t0k"))
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for token in (cam1, cam2, "shared-t0k"):
            assert stub.ModelInfer(_request(wire), metadata=_auth(token), timeout=30).outputs
        assert _code(lambda: stub.ModelInfer(_request(wire), timeout=30))[0] == grpc.StatusCode.UNAUTHENTICATED
        code, details = _code(lambda: stub.ModelInfer(_request(wire), metadata=_auth("x" * 43), timeout=30))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")

        # cam-01 holds a stream open; one request goes through before the revocation
        outbox: queue.SimpleQueue = queue.SimpleQueue()

        def requests():
            while (item := outbox.get()) is not None:
                yield item

        send = outbox.put
        replies = stub.ModelStreamInfer(requests(), metadata=_auth(cam1), timeout=60)
        send(_request(wire, request_id="before"))
        first = StreamInferResponse.from_proto(next(replies))
        assert first.error_message == "" and first.response.id == "before"

        assert main(["devices", "revoke", "--id", "cam-01", "--tokens", str(tokens)]) == 0
        revoked_at = time.monotonic()
        while True:  # new calls from cam-01 are refused within REVOKE_WITHIN_S, no restart
            code, details = _code(lambda: stub.ModelInfer(_request(wire), metadata=_auth(cam1), timeout=30))
            if code != grpc.StatusCode.OK or time.monotonic() - revoked_at > REVOKE_WITHIN_S:
                break
            time.sleep(0.05)
        took = time.monotonic() - revoked_at
        assert code == grpc.StatusCode.UNAUTHENTICATED and took <= REVOKE_WITHIN_S, (code, took)
        assert "device 'cam-01' was revoked" in details and "privsplit devices add" in details
        # the open stream: its next message gets one error reply naming the device; the stream stays usable
        send(_request(wire, request_id="after"))
        after = StreamInferResponse.from_proto(next(replies))
        assert after.response is None and after.error_message.startswith("UNAUTHENTICATED: device 'cam-01'")
        send(None)
        assert list(replies) == []
        # cam-02 and the shared token are unaffected; health needs no token
        assert stub.ModelInfer(_request(wire), metadata=_auth(cam2), timeout=30).outputs
        assert stub.ServerReady(pb.ServerReadyRequest(), metadata=_auth("shared-t0k"), timeout=30).ready
        # re-issued: a new token works, the old one stays refused
        cam1b = _add(tokens, "cam-01", tmp_path / "cam1b")
        deadline = time.monotonic() + REVOKE_WITHIN_S
        while (
            _code(lambda: stub.ModelInfer(_request(wire), metadata=_auth(cam1b), timeout=30))[0] != grpc.StatusCode.OK
        ):
            assert time.monotonic() < deadline, "a re-issued device token was not picked up"
            time.sleep(0.05)
        assert _code(lambda: stub.ModelInfer(_request(wire), metadata=_auth(cam1), timeout=30))[0] == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # a file broken at run time refuses every device (fail closed) instead of serving the old list
        tokens.write_text("cam-02 not-a-digest\n")
        deadline = time.monotonic() + REVOKE_WITHIN_S
        while _code(lambda: stub.ModelInfer(_request(wire), metadata=_auth(cam2), timeout=30))[0] == grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "a broken tokens file kept serving the old devices"
            time.sleep(0.05)
        assert stub.ModelInfer(_request(wire), metadata=_auth("shared-t0k"), timeout=30).outputs
    assert srv.metrics.counter("nv_inference_request_failure", "UNAUTHENTICATED") >= 4


def test_device_tokens_file_and_commands_refuse_bad_input(bundles, tmp_path, capsys):
    tokens = tmp_path / "devices.txt"
    tokens.write_text("cam-01 " + "a" * 64 + "\ncam-01 " + "b" * 64 + "\n")
    with pytest.raises(Exception, match=r"devices.txt line 2: device 'cam-01' is listed twice"):
        create_server(ServeConfig(bundle=bundles.cloud, port=0, device_tokens=tokens))
    tokens.write_text("# devices\ncam-01 nothex\n")
    assert main(["serve", str(bundles.cloud), "--port", "0", "--device-tokens", str(tokens)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 2: expected 'DEVICE-ID SHA256-HEX'" in err
    good = tmp_path / "good.txt"
    assert main(["devices", "add", "--id", "cam 1", "--tokens", str(good)]) == 2
    assert "device id 'cam 1' is not usable" in capsys.readouterr().err
    assert main(["devices", "add", "--id", "cam-1", "--tokens", str(good)]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert len(token) >= 40 and "shown once" in out.err
    assert main(["devices", "add", "--id", "cam-1", "--tokens", str(good)]) == 2
    assert "already in" in capsys.readouterr().err
    assert main(["devices", "revoke", "--id", "cam-9", "--tokens", str(good)]) == 2
    assert "'cam-9' is not in" in capsys.readouterr().err
    assert main(["devices", "list", "--tokens", str(good)]) == 0
    assert capsys.readouterr().out.split() == ["cam-1"]
    assert main(["serve", str(bundles.cloud), "--port", "0", "--rate-burst", "3"]) == 2
    assert "--rate-burst needs --rate-limit" in capsys.readouterr().err


def test_rate_limit_per_identity(bundles, wire, tmp_path):
    tokens = tmp_path / "devices.txt"
    cam1, cam2 = _add(tokens, "cam-01", tmp_path / "cam1"), _add(tokens, "cam-02", tmp_path / "cam2")
    # 0.01 requests/s: nothing refills during the test, so the counts below are exact
    config = ServeConfig(bundle=bundles.cloud, port=0, device_tokens=tokens, rate_limit=RateLimit(rate=0.01, burst=3))
    srv, port = create_server(config)
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        codes = [_code(lambda: stub.ModelInfer(_request(wire), metadata=_auth(cam1), timeout=30)) for _ in range(5)]
        assert [c for c, _ in codes] == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        details = codes[3][1]
        assert "rate limit of 'device cam-01' exceeded: 0.01 requests/s, burst 3" in details and "retry in" in details
        # another device has its own bucket; each message of a stream counts, refused ones get one error reply
        stream = [_request(wire, request_id=f"s{i}") for i in range(5)]
        replies = [StreamInferResponse.from_proto(r) for r in stub.ModelStreamInfer(iter(stream), metadata=_auth(cam2))]
        assert [r.error_message == "" for r in replies] == [True, True, True, False, False]
        assert replies[3].error_message.startswith("RESOURCE_EXHAUSTED: rate limit of 'device cam-02'")
        # metadata calls count too (a flood of them is refused like inference)
        code, details = _code(lambda: stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=_auth(cam1), timeout=9))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "device cam-01" in details
    assert srv.metrics.counter("nv_inference_request_failure", "RESOURCE_EXHAUSTED") == 5
    # without tokens the identity is the peer's address
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0, rate_limit=RateLimit(rate=0.01, burst=1)))
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(_request(wire), timeout=30).outputs
        code, details = _code(lambda: stub.ModelInfer(_request(wire), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "'peer 127.0.0.1'" in details


def test_a_rate_limited_stream_is_slowed_not_refused(bundles, wire, tmp_path):
    """A stream's reader takes the next message only when the caller may send it: a stream written faster than
    its rate is served at the rate (each message once, none refused) instead of costing a refusal per message."""
    tokens = tmp_path / "devices.txt"
    cam = _add(tokens, "cam-01", tmp_path / "cam1")
    config = ServeConfig(bundle=bundles.cloud, port=0, device_tokens=tokens, rate_limit=RateLimit(rate=40, burst=1))
    srv, port = create_server(config)
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stream = [_request(wire, request_id=f"s{i}") for i in range(12)]  # written at once: 11 over the rate
        replies = [StreamInferResponse.from_proto(r) for r in stub.ModelStreamInfer(iter(stream), metadata=_auth(cam))]
    assert [r.error_message for r in replies] == [""] * 12
    assert [r.response.id for r in replies] == [f"s{i}" for i in range(12)]
    assert srv.metrics.counter("nv_inference_request_failure", "RESOURCE_EXHAUSTED") == 0


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_384, 300_000])
def test_stream_replies_are_written_as_the_message_protobuf_would(size):
    from privsplit.cloud.servicer import _stream_reply

    inner = pb.ModelInferResponse(id="x" * size, model_name="m")
    expected = pb.ModelStreamInferResponse()
    expected.infer_response.CopyFrom(inner)
    assert _stream_reply(inner.SerializeToString()) == expected.SerializeToString()


def _echo(features):
    class Out:
        probs = np.zeros((len(features), 2), np.float32)
        labels = np.zeros(len(features), np.int64)
        compute_us = 1

    return Out()


def test_submit_after_stop_is_refused_and_nothing_waits_forever():
    x = np.zeros((1, 2), np.float32)
    batcher = DynamicBatcher(_echo, BatchConfig(max_batch=4)).start()
    assert batcher.infer(x, timeout_s=10).labels.shape == (1,)
    batcher.close(timeout=10)
    with pytest.raises(ProtocolError, match="draining") as err:
        batcher.submit(x)
    assert err.value.code is Code.UNAVAILABLE
    # a batcher whose model thread never ran: close refuses what is queued instead of leaving it waiting
    idle = DynamicBatcher(_echo, BatchConfig(max_batch=4))
    idle.expect()  # another request is arriving, so this one queues instead of running inline
    queued = idle.submit(x)
    idle.close(timeout=0.1)
    with pytest.raises(ProtocolError, match="stopped before running") as err:
        queued.result()  # no deadline: still answered
    assert err.value.code is Code.UNAVAILABLE and queued.features.size == 0
    # submitting from many threads while it closes: every request is either refused or answered
    busy = DynamicBatcher(_echo, BatchConfig(max_batch=4, max_delay_ms=0.5)).start()
    outcomes: list[str] = []
    lock = threading.Lock()

    def client():
        for _ in range(300):
            try:
                ticket = busy.submit(x)
            except ProtocolError as exc:
                outcome = f"refused {exc.code.value}"
            else:
                try:
                    ticket.result(30)
                    outcome = "answered"
                except ProtocolError as exc:
                    outcome = f"failed {exc.code.value}"
                assert ticket.features.size == 0  # a finished request keeps no features
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    busy.close(timeout=30)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request waited forever after stop"
    assert set(outcomes) <= {"answered", "refused UNAVAILABLE"} and len(outcomes) == 1800
    assert "answered" in outcomes


def test_rpc_threads_cannot_keep_a_stopped_server_alive(bundles, wire):
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0))
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(_request(wire), timeout=30).outputs
        rpc = [t for t in threading.enumerate() if t.name.startswith("privsplit-rpc")]
        assert rpc and all(t.daemon for t in rpc)


def test_a_stream_that_never_reads_is_held_to_its_window(bundles, wire):
    window, total = 8, 4000
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0, stream_window=window))
    # a small receive window on the client, so unread replies back up to the server quickly
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        message = _request(wire)
        yielded = [0]

        def flood():
            for i in range(total):
                yielded[0] = i + 1
                message.id = str(i)
                yield message

        replies = stub.ModelStreamInfer(flood(), timeout=600)  # started; nothing is read yet
        deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
        while srv.servicer.peak_stream_backlog < window:
            assert time.monotonic() < deadline, (
                f"the backlog never reached the window ({srv.servicer.peak_stream_backlog})"
            )
            time.sleep(0.05)
        stalled, before = 0, -1
        while stalled < 10:  # the client's writes stop: the server no longer reads
            stalled = stalled + 1 if yielded[0] == before else 0
            before = yielded[0]
            assert time.monotonic() < deadline, "the client kept writing: no backpressure"
            time.sleep(0.1)
        assert yielded[0] < total
        assert srv.servicer.peak_stream_backlog <= window + 1
        # reading resumes the stream: every request answered, in order, nothing lost
        ids = [StreamInferResponse.from_proto(r).response.id for r in replies]
        assert ids == [str(i) for i in range(total)]
        assert srv.servicer.peak_stream_backlog <= window + 1
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_load_figures_go_back_only_when_the_operator_turns_them_on(bundles, wire):
    for reply_load in (False, True):
        srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0, reply_load=reply_load))
        with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            reply = InferResponse.from_proto(stub.ModelInfer(_request(wire, slice(0, 2)), timeout=30))
            stream = [StreamInferResponse.from_proto(r) for r in stub.ModelStreamInfer(iter([_request(wire)]))]
        keys = set(reply.parameters)
        assert keys == set(stream[0].response.parameters)
        if reply_load:
            assert keys == {"compute_us", "queue_us", "batch_size"} and reply.parameters["batch_size"] == 2
        else:
            assert keys == {"compute_us"}


def test_serve_limits_malloc_arenas_unless_the_operator_set_them():
    """`privsplit serve` limits glibc's malloc arenas (the fuzz's RSS growth, privsplit.cloud.memory) and passes
    the limit on to the processes it starts (its --workers) through the environment; an operator's own
    MALLOC_ARENA_MAX wins."""
    import os
    import subprocess
    import sys

    code = (
        "import os; from privsplit.cloud.memory import limit_malloc_arenas; "
        "print(limit_malloc_arenas(), os.environ.get('MALLOC_ARENA_MAX'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "2"]
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "8"}, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["None", "8"]
