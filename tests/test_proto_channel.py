"""privsplit.proto.channel without a model: address validation, the token-over-plaintext rule, the
keepalive contract between client and server (real sockets), and the generated stub used with bytes."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from privsplit.errors import ConfigError
from privsplit.proto import channel as ch
from privsplit.proto.inference import open_inference_grpc_pb2 as pb


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("127.0.0.1:8001", "127.0.0.1", 8001),
        ("[::1]:1", "::1", 1),
        ("dns:///cloud.example:65535", "cloud.example", 65535),
        ("cloud.example:443", "cloud.example", 443),
        ("dns:cloud.example:80", "cloud.example", 80),
    ],
)
def test_valid_targets(text, host, port):
    target = ch.parse_target(text)
    assert (target.host, target.port, target.dial) == (host, port, text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("127.0.0.1:99999", "'127.0.0.1:99999': the port '99999' is not in 1-65535"),
        ("host:0", "port '0' is not"),
        ("::1:8001", "put an IPv6 address in brackets"),
        ("[fe80::zz]:1", "not an IPv6 address"),
        ("host", "HOST:PORT"),
        ("http://host:80", "HOST:PORT"),
        ("dns://8.8.8.8/host:53", "dns:///HOST:PORT"),
        ("", "HOST:PORT"),
        ("user@host:22", "not a host name"),
    ],
)
def test_invalid_targets_get_one_line(text, words):
    with pytest.raises(ConfigError) as err:
        ch.parse_target(text, flag="--target")
    assert words in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("--target")


def test_a_token_needs_tls_loopback_or_insecure():
    for target in ("127.0.0.1:1", "127.8.0.1:1", "[::1]:1", "localhost:1", "dns:///localhost:1"):
        assert ch.DialConfig(target=target, token="t").metadata == (("authorization", "Bearer t"),)
    with pytest.raises(ConfigError, match="refusing to send the bearer token in plaintext to 10.0.0.2:1"):
        ch.DialConfig(target="10.0.0.2:1", token="t")
    assert ch.DialConfig(target="10.0.0.2:1", token="t", insecure=True).insecure
    assert ch.DialConfig(target="10.0.0.2:1", token="t", tls=ch.ChannelTls(ca=b"pem")).tls is not None
    assert ch.DialConfig(target="10.0.0.2:1").metadata == ()  # no token: plaintext is the user's choice


@pytest.mark.parametrize(
    "text, dial, addresses",
    [
        ("127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2", (("127.0.0.1", 1), ("127.0.0.2", 2))),
        (" 10.0.0.1:80 , 10.0.0.2:80 ", "ipv4:10.0.0.1:80,10.0.0.2:80", (("10.0.0.1", 80), ("10.0.0.2", 80))),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2", (("::1", 1), ("::1", 2))),
        ("ipv4:127.0.0.1:5,127.0.0.1:6", "ipv4:127.0.0.1:5,127.0.0.1:6", (("127.0.0.1", 5), ("127.0.0.1", 6))),
    ],
)
def test_replica_lists_become_one_balanced_multi_address_target(text, dial, addresses):
    target = ch.parse_target(text)
    assert (target.dial, target.addresses, target.balanced) == (dial, addresses, True)
    assert (target.host, target.port) == addresses[0] and str(target) == text.strip()
    assert ch.parse_target("dns:///svc.ns:8001").balanced and not ch.parse_target("svc.ns:8001").balanced


@pytest.mark.parametrize(
    "text, words",
    [
        ("cloud-a:1,cloud-b:1", "'cloud-a:1' is not IP:PORT; a list takes IP addresses only (for a name"),
        ("dns:///a:1,127.0.0.1:2", "use dns:///NAME:PORT"),
        ("127.0.0.1:1,,127.0.0.1:2", "an empty entry in the list"),
        ("127.0.0.1:1,", "an empty entry in the list"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6 addresses"),
        ("127.0.0.1:1,127.0.0.1:1", "'127.0.0.1:1' is listed twice"),
        ("127.0.0.1:1,127.0.0.1:0", "the port '0' is not in 1-65535"),
        ("ipv6:127.0.0.1:1", "not all ipv6 addresses"),
    ],
)
def test_bad_replica_lists_get_one_line(text, words):
    with pytest.raises(ConfigError) as err:
        ch.parse_target(text, flag="--target")
    assert words in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("--target")


def test_the_commands_refuse_a_bad_list_in_one_line(tmp_path, capsys):
    from privsplit.cli.main import main

    for argv in (
        ["edge", "infer", str(tmp_path), str(tmp_path / "x.png"), "--server", "cloud-a:1,cloud-b:1"],
        ["bench", "cloud", "--target", "127.0.0.1:1,,127.0.0.1:2", "--encoder-hash", "ab"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("is not IP:PORT" in err or "an empty entry" in err), err


def test_a_list_dials_round_robin_and_keeps_the_token_and_tls_rules():
    options = dict(ch.DialConfig(target="127.0.0.1:1,127.0.0.1:2", retry=ch.UnavailableRetry()).options())
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert ch.DialConfig(target="127.0.0.1:1,127.0.0.2:2", token="t").metadata  # all loopback
    with pytest.raises(ConfigError, match="in plaintext to 127.0.0.1:1,10.0.0.2:2"):
        ch.DialConfig(target="127.0.0.1:1,10.0.0.2:2", token="t")  # one replica is not
    with pytest.raises(ConfigError, match="pass --tls-server-name"):
        ch.DialConfig(target="10.0.0.1:1,10.0.0.2:2", tls=ch.ChannelTls(ca=b"pem"))
    assert ch.DialConfig(target="10.0.0.1:1,10.0.0.2:2", tls=ch.ChannelTls(ca=b"pem", server_name="cloud")).tls


def _named_server(name: bytes):
    method = grpc.unary_unary_rpc_method_handler(lambda request, context: name)
    handler = grpc.method_handlers_generic_handler(ch.SERVICE_NAME, {"ServerLive": method})
    server = grpc.server(ThreadPoolExecutor(2), handlers=(handler,), options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_round_robin_spreads_calls_and_skips_a_stopped_replica():
    """Two real servers behind one channel: calls alternate between them; once one stops, every call goes
    to the other and none fails (gRPC's retry policy covers the moment the connection drops)."""
    (a, port_a), (b, port_b) = _named_server(b"A"), _named_server(b"B")
    channel = ch.dial(ch.DialConfig(target=f"127.0.0.1:{port_a},127.0.0.1:{port_b}", retry=ch.UnavailableRetry()))
    call = channel.unary_unary(f"/{ch.SERVICE_NAME}/ServerLive")
    try:
        deadline = time.monotonic() + 10
        while len({call(b"", timeout=5, wait_for_ready=True) for _ in range(4)}) < 2:  # until both are connected
            assert time.monotonic() < deadline, "round_robin never reached both servers"
        names = [call(b"", timeout=5) for _ in range(20)]
        assert names.count(b"A") == names.count(b"B") == 10
        b.stop(0)
        assert [call(b"", timeout=5) for _ in range(20)] == [b"A"] * 20
    finally:
        channel.close()
        a.stop(0)
        b.stop(0)


def test_keepalive_defaults_fit_a_default_grpc_server():
    options = dict(ch.DialConfig(target="h:1").options())
    assert options["grpc.keepalive_time_ms"] >= 300_000  # a default server's min_ping_interval_without_data_ms
    assert options["grpc.enable_retries"] == 0 and "grpc.service_config" not in options
    server = dict(ch.server_keepalive_options())
    assert server["grpc.http2.min_ping_interval_without_data_ms"] <= options["grpc.keepalive_time_ms"]
    retried = dict(ch.DialConfig(target="h:1", retry=ch.UnavailableRetry(attempts=3)).options())
    assert retried["grpc.enable_retries"] == 1 and '"maxAttempts": 3' in retried["grpc.service_config"]


def _echo_server(options):
    def echo(request_iterator, context):
        yield from request_iterator

    handler = grpc.method_handlers_generic_handler("test.Echo", {"Chat": grpc.stream_stream_rpc_method_handler(echo)})
    server = grpc.server(ThreadPoolExecutor(4), handlers=(handler,), options=options)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _idle_stream(port: int, idle_s: float) -> list[bytes] | grpc.RpcError:
    """Open a stream, exchange one message, stay idle ``idle_s`` (keepalive pings only), exchange another."""
    dial = ch.DialConfig(target=f"127.0.0.1:{port}", keepalive=ch.Keepalive(time_ms=1000, timeout_ms=1000))
    channel = ch.dial(dial)
    go = threading.Event()

    def messages():
        yield b"one"
        go.wait(idle_s + 5)
        yield b"two"

    call = channel.stream_stream("/test.Echo/Chat")(messages(), timeout=idle_s + 20)
    try:
        got = [next(call)]
        time.sleep(idle_s)
        go.set()
        got.append(next(call))
        return got
    except grpc.RpcError as exc:
        return exc
    finally:
        go.set()
        channel.close()


def test_the_server_keepalive_policy_accepts_the_clients_pings_on_an_idle_stream():
    """Scaled down (client pings every 1 s): a default server answers such pings with GOAWAY too_many_pings
    and the idle camera stream dies; with the policy from server_keepalive_options it survives."""
    default, port = _echo_server([])
    try:
        result = _idle_stream(port, 6.0)
    finally:
        default.stop(0)
    assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.UNAVAILABLE, result
    matched, port = _echo_server(ch.server_keepalive_options(min_ping_ms=500))
    try:
        assert _idle_stream(port, 6.0) == [b"one", b"two"]
    finally:
        matched.stop(0)


def test_the_generated_stub_sends_pre_serialised_bytes():
    from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc

    class Ready(pb_grpc.GRPCInferenceServiceServicer):
        def ServerReady(self, request, context):  # noqa: N802
            return pb.ServerReadyResponse(ready=True)

    server = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Ready(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = ch.dial(ch.DialConfig(target=f"127.0.0.1:{port}"))
    try:
        raw = pb.ServerReadyRequest().SerializeToString()
        assert ch.stub(channel, raw=True).ServerReady(raw, timeout=5).ready is True
        assert pb.ServerReadyResponse.FromString(
            ch.stub(channel, raw=True, raw_replies=True).ServerReady(raw, timeout=5)
        ).ready
        assert ch.stub(channel).ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        with pytest.raises(grpc.RpcError) as err:
            ch.stub(channel).ModelInfer(pb.ModelInferRequest(), timeout=5)
        error = ch.rpc_error(err.value, f"127.0.0.1:{port}")
        assert error.code.value == "UNIMPLEMENTED" and f"127.0.0.1:{port} refused the request" in str(error)
    finally:
        channel.close()
        server.stop(0)


def test_stream_error_messages_parse():
    assert ch.stream_error("FAILED_PRECONDITION: hash not accepted")[0].value == "FAILED_PRECONDITION"
    assert ch.stream_error("garbage")[0].value == "INTERNAL"
