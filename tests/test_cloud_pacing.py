"""Shared-server stream pacing (``privsplit serve --stream-pace``): while another caller uses the server a stream
is read at most R messages a second; alone it is never paced; nothing is refused. Behaviour only (a fake clock,
then real gRPC on port 0); the flood's effect on other callers' latency is measured in
benchmarks/serve_hardening.py."""

from __future__ import annotations

import threading

import grpc
import pytest
from test_cloud_support import wire_features

from privsplit.cli.main import build_parser
from privsplit.cli.serve import build_config
from privsplit.cloud import ServeConfig, create_server
from privsplit.cloud.config import DEFAULT_STREAM_PACE, StreamPace
from privsplit.cloud.pacing import ACTIVE_S, MAX_FLOWS, StreamPacer
from privsplit.errors import ConfigError
from privsplit.proto import StreamInferResponse, features_request
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reads(pacer: StreamPacer, flow, count: int) -> int:
    """How many of ``count`` messages ``flow``'s stream may read now (each read also marks the flow seen)."""
    taken = 0
    for _ in range(count):
        if pacer.delay(flow) > 0:
            break
        pacer.seen(flow)
        taken += 1
    return taken


def test_a_stream_alone_on_the_server_is_never_paced():
    clock = Clock()
    pacer = StreamPacer(StreamPace(rate=10, burst=5), clock=clock)
    assert _reads(pacer, "fast", 10_000) == 10_000  # a batch job alone keeps the whole server
    clock.now += 0.001
    assert _reads(pacer, "fast", 1000) == 1000


def test_while_another_caller_is_active_a_stream_gets_its_burst_then_its_rate():
    clock = Clock()
    pacer = StreamPacer(StreamPace(rate=10, burst=5), clock=clock)
    pacer.seen("camera")  # another flow sent a request just now
    assert _reads(pacer, "flood", 100) == 5  # the burst, then it waits
    wait = pacer.delay("flood")
    assert wait == pytest.approx(0.1)  # one message per 1/rate
    clock.now += 0.5
    pacer.seen("camera")
    assert _reads(pacer, "flood", 100) == 5  # half a second at 10/s
    # the other caller is not paced by the flood's bucket: its own stream has its own full burst
    assert _reads(pacer, "camera", 100) == 5


def test_pacing_ends_when_the_other_caller_has_been_quiet_for_the_active_window():
    clock = Clock()
    pacer = StreamPacer(StreamPace(rate=10, burst=1), clock=clock)
    pacer.seen("camera")
    assert _reads(pacer, "flood", 100) == 1
    clock.now += ACTIVE_S * 0.9
    assert pacer.shared("flood") and pacer.delay("flood") == 0  # refilled (9 tokens' worth, capped at 1)
    assert pacer.delay("flood") > 0
    clock.now += ACTIVE_S * 0.2  # the camera's last request is now older than ACTIVE_S
    assert not pacer.shared("flood")
    assert _reads(pacer, "flood", 1000) == 1000
    # the most recent other flow counts, however many flows the flood's own messages came between
    pacer.seen("a")
    pacer.seen("flood")
    pacer.seen("flood")
    assert pacer.shared("flood") and pacer.shared("a")


def test_the_bucket_table_is_bounded():
    clock = Clock()
    pacer = StreamPacer(StreamPace(rate=10, burst=2), clock=clock)
    for k in range(MAX_FLOWS + 50):
        pacer.delay(f"flow {k}")
    assert len(pacer._buckets) <= MAX_FLOWS


def test_stream_pace_is_validated_and_the_cli_default_is_on():
    with pytest.raises(ConfigError, match="--stream-pace must be a finite number > 0"):
        StreamPace(rate=0, burst=1)
    with pytest.raises(ConfigError, match="burst must be >= 1"):
        StreamPace(rate=5, burst=0)
    parser = build_parser()
    assert build_config(parser.parse_args(["serve", "B"])).stream_pace == DEFAULT_STREAM_PACE
    assert DEFAULT_STREAM_PACE == StreamPace(rate=60.0, burst=60)
    assert build_config(parser.parse_args(["serve", "B", "--stream-pace", "off"])).stream_pace is None
    assert build_config(parser.parse_args(["serve", "B", "--stream-pace", "30"])).stream_pace == StreamPace(30.0, 30)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "B", "--stream-pace", "0"])
    assert ServeConfig(bundle="B").stream_pace == DEFAULT_STREAM_PACE  # the library default is on too


@pytest.fixture(scope="module")
def wire(bundles, digits_run):
    return wire_features(bundles, digits_run, count=4)


def _request(wire, request_id: str):
    return features_request(
        wire.features[0:1],
        encoder_hash=wire.encoder_hash,
        scale=wire.scale,
        zero_point=wire.zero_point,
        request_id=request_id,
    ).to_proto()


def _stream(stub, wire, count: int) -> list[StreamInferResponse]:
    messages = [_request(wire, f"s{i}") for i in range(count)]
    return [StreamInferResponse.from_proto(r) for r in stub.ModelStreamInfer(iter(messages), timeout=120)]


def test_a_stream_is_paced_only_while_another_connection_sends_and_every_message_is_answered(bundles, wire):
    pace = StreamPace(rate=40, burst=2)
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0, stream_pace=pace))
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        replies = _stream(stub, wire, 30)  # alone on the server
        assert [r.response.id for r in replies] == [f"s{i}" for i in range(30)]
        assert srv.servicer.paced_waits == 0

        other_ok, stop = [0], threading.Event()

        def other() -> None:  # another connection (another flow), one unary request after another
            # its own TCP connection (channels of one process to one target otherwise share one)
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as own:
                other_stub = pb_grpc.GRPCInferenceServiceStub(own)
                while not stop.is_set():
                    assert other_stub.ModelInfer(_request(wire, "other"), timeout=30).outputs
                    other_ok[0] += 1

        thread = threading.Thread(target=other)
        thread.start()
        try:
            while other_ok[0] < 3:  # the other caller is active
                stop.wait(0.01)
            replies = _stream(stub, wire, 30)
        finally:
            stop.set()
            thread.join(30)
        assert [r.error_message for r in replies] == [""] * 30  # slowed, never refused
        assert [r.response.id for r in replies] == [f"s{i}" for i in range(30)]
        assert srv.servicer.paced_waits > 0  # past its burst of 2 the reader waited for the pace
    assert srv.metrics.counter("nv_inference_request_failure", "RESOURCE_EXHAUSTED") == 0


def test_stream_pace_off_never_waits(bundles, wire):
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0, stream_pace=None))
    with srv, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert len(_stream(stub, wire, 10)) == 10
        assert srv.servicer.paced_waits == 0 and srv.servicer.pacer is None
