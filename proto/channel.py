"""One way to dial the Open Inference Protocol service: target, TLS, token, keepalive, stubs, errors.

Every client in privsplit (the device client, the load probe, ``privsplit bench``) dials through here:

* :func:`parse_target` validates ``HOST:PORT``, ``[v6]:PORT``, ``dns:///HOST:PORT`` (port 1-65535) and lists of
  replicas (``IP:PORT,IP:PORT``, dialed as gRPC's ``ipv4:``/``ipv6:`` multi-address target); a list or a
  ``dns:`` name is balanced with gRPC's ``round_robin`` policy (service config), so each call goes to the
  next connected replica and a dead one is skipped once its connection drops;
* :class:`DialConfig` holds the address, :class:`ChannelTls`, bearer token, :class:`Keepalive` and an
  optional gRPC retry policy (``grpc.service_config``); a token over plaintext is refused before dialing
  unless the target is loopback or ``insecure=True`` (``--insecure``);
* :func:`dial` / :func:`dial_aio` open a sync or ``grpc.aio`` channel; :func:`stub` wraps it in the
  *generated* ``GRPCInferenceServiceStub``, optionally passing pre-serialised bytes through (``raw``);
* :func:`rpc_error` turns a ``grpc.RpcError`` into a :class:`ProtocolError` that says what happened
  (a failed TLS handshake is reported as such, not as a bare UNAVAILABLE); :func:`stream_error` parses
  the ``error_message`` of a streamed reply.

Keepalive: the client pings every :data:`CLIENT_KEEPALIVE_MS` (5 min, the shortest interval a default
gRPC server accepts: ``grpc.http2.min_ping_interval_without_data_ms``; more frequent pings earn
"too_many_pings" GOAWAYs) and gives up on a dead link 20 s after an unanswered ping; the privsplit
server accepts pings down to :data:`SERVER_MIN_PING_MS` and pings idle clients itself
(:func:`server_keepalive_options`). Leaf module: grpc and the generated code only (no torch).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import grpc

from privsplit.errors import ConfigError
from privsplit.proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
from privsplit.proto.status import Code, ProtocolError

AUTH_HEADER = "authorization"
SERVICE_NAME = "inference.GRPCInferenceService"
CLIENT_KEEPALIVE_MS = 300_000
KEEPALIVE_TIMEOUT_MS = 20_000
SERVER_MIN_PING_MS = 10_000  # the privsplit server accepts client pings this often (with or without data)
SERVER_KEEPALIVE_MS = 300_000  # the server pings idle connections: dead devices release their worker


@dataclass(frozen=True)
class Target:
    """A validated address. ``host``/``port``: the first (or only) one; ``addresses``: every ``(host, port)``
    listed; ``dial``: the string gRPC dials (``ipv4:A:P,B:P`` for a list); ``balanced``: gRPC's
    ``round_robin`` policy spreads calls over every address (a list, or a ``dns:`` name that may resolve
    to several); ``text``: what the user wrote (shown in messages)."""

    host: str
    port: int
    dial: str
    addresses: tuple[tuple[str, int], ...] = ()
    balanced: bool = False
    text: str = ""

    @property
    def loopback(self) -> bool:
        return all(is_loopback(host) for host, _ in self.addresses or ((self.host, self.port),))

    def __str__(self) -> str:
        return self.text or self.dial


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_USAGE = "must be HOST:PORT, [IPv6]:PORT, dns:///HOST:PORT or a comma-separated list of IP:PORT, with ports in 1-65535"


def _parse_one(raw: str, text: str, flag: str) -> tuple[str, int, bool]:
    """``(host, port, dns scheme given)`` of one ``HOST:PORT`` / ``[v6]:PORT`` / ``dns:///HOST:PORT``."""
    usage = f"{flag} {_USAGE}"
    rest, dns = raw, raw.startswith("dns:")
    if dns:
        rest = rest[4:]
        if rest.startswith("//"):  # dns://[authority]/host:port; privsplit uses the system resolver
            authority, slash, rest = rest[2:].partition("/")
            if not slash or authority:
                raise ConfigError(f"{usage}, got {text!r} (use dns:///HOST:PORT, without a DNS server)")
    elif "://" in rest:
        raise ConfigError(f"{usage}, got {text!r}")
    if rest.startswith("["):
        host, close, port_text = rest[1:].partition("]")
        if not close or not port_text.startswith(":"):
            raise ConfigError(f"{usage}, got {text!r}")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon or not host or ":" in host:
            hint = " (put an IPv6 address in brackets: [::1]:8001)" if rest.count(":") > 1 else ""
            raise ConfigError(f"{usage}, got {text!r}{hint}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{flag} {text!r}: the port {port_text!r} is not in 1-65535")
    if not host or any(c.isspace() or c in "/@?#," for c in host):
        raise ConfigError(f"{flag} {text!r}: {host!r} is not a host name or address")
    return host, int(port_text), dns


def _parse_list(items: list[str], text: str, flag: str) -> Target:
    """IP:PORT entries -> one ``ipv4:``/``ipv6:`` multi-address target (gRPC resolves no names in these)."""
    addresses: list[tuple[str, int]] = []
    versions: set[int] = set()
    for item in items:
        if not item:
            raise ConfigError(f"{flag} {text!r}: an empty entry in the list (write HOST:PORT,HOST:PORT)")
        host, port, dns = _parse_one(item, text, flag)
        version: int = 0
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            pass
        if dns or not version:
            raise ConfigError(
                f"{flag} {text!r}: {item!r} is not IP:PORT; a list takes IP addresses only "
                "(for a name that resolves to several replicas use dns:///NAME:PORT)"
            )
        if (host, port) in addresses:
            raise ConfigError(f"{flag} {text!r}: {item!r} is listed twice")
        versions.add(version)
        addresses.append((host, port))
    if len(versions) > 1:
        raise ConfigError(f"{flag} {text!r}: mixes IPv4 and IPv6 addresses; list addresses of one family")
    if versions == {6}:
        dial = "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in addresses)
    else:
        dial = "ipv4:" + ",".join(f"{h}:{p}" for h, p in addresses)
    host, port = addresses[0]
    return Target(host=host, port=port, dial=dial, addresses=tuple(addresses), balanced=len(addresses) > 1, text=text)


def parse_target(text: str, *, flag: str = "--server") -> Target:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``dns:///HOST:PORT`` or several ``IP:PORT`` (comma-separated, or
    gRPC's own ``ipv4:A:P,B:P`` / ``ipv6:[A]:P,[B]:P``) -> :class:`Target`; one-line ConfigError otherwise."""
    raw = (text or "").strip()
    if raw.startswith(("ipv4:", "ipv6:")):
        scheme, _, rest = raw.partition(":")
        target = _parse_list([item.strip() for item in rest.split(",")], raw, flag)
        if {ipaddress.ip_address(h).version for h, _ in target.addresses} != {int(scheme[-1])}:
            raise ConfigError(f"{flag} {text!r}: the addresses are not all {scheme} addresses")
        return target
    if "," in raw:
        return _parse_list([item.strip() for item in raw.split(",")], raw, flag)
    host, port, dns = _parse_one(raw, text, flag)
    return Target(host=host, port=port, dial=raw, addresses=((host, port),), balanced=dns, text=raw)


def check_token_transport(target: Target, *, token: str | None, tls: bool, insecure: bool) -> None:
    """A bearer token travels only over TLS, to a loopback address, or with an explicit ``--insecure``."""
    if token is None:
        return
    if not token or any(c.isspace() for c in token):
        raise ConfigError("the bearer token must be one word without spaces")
    if not tls and not target.loopback and not insecure:
        raise ConfigError(
            f"refusing to send the bearer token in plaintext to {target}: pass --tls-ca (TLS), "
            "or --insecure if the network between them is trusted"
        )


@dataclass(frozen=True)
class ChannelTls:
    """PEM bytes: ``ca`` verifies the server (turns TLS on); ``cert`` + ``key``: the client's certificate
    for mutual TLS; ``server_name``: the name checked against the server certificate (default: the host)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together (mutual TLS needs both)")

    @classmethod
    def from_files(
        cls, ca: Path, cert: Path | None = None, key: Path | None = None, *, server_name: str | None = None
    ) -> ChannelTls:
        return cls(
            ca=read_pem(ca, "--tls-ca"),
            cert=read_pem(cert, "--tls-cert"),
            key=read_pem(key, "--tls-key"),
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


@overload
def read_pem(path: Path, flag: str) -> bytes: ...
@overload
def read_pem(path: Path | None, flag: str) -> bytes | None: ...


def read_pem(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from None


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--token-file {path}: not text; put the token on one line") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: must hold one token without spaces")
    return token


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive pings of the client (see the module doc for the defaults)."""

    time_ms: int = CLIENT_KEEPALIVE_MS
    timeout_ms: int = KEEPALIVE_TIMEOUT_MS

    def __post_init__(self) -> None:
        if self.time_ms < 1000 or self.timeout_ms < 1000:
            raise ConfigError(f"keepalive time and timeout must be >= 1000 ms, got {self.time_ms} / {self.timeout_ms}")


@dataclass(frozen=True)
class UnavailableRetry:
    """gRPC's own retry of UNAVAILABLE replies (``grpc.service_config`` retryPolicy; gRPC caps attempts at 5)."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.attempts <= 5:
            raise ConfigError(f"gRPC retry attempts must be in 2..5, got {self.attempts}")

    def method_config(self) -> dict:
        policy = {
            "maxAttempts": self.attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        return {"name": [{"service": SERVICE_NAME}], "retryPolicy": policy}

    def service_config(self) -> str:
        return json.dumps({"methodConfig": [self.method_config()]})


@dataclass(frozen=True)
class DialConfig:
    """How to reach one server. ``insecure``: allow a bearer token over plaintext to a non-loopback host."""

    target: str
    tls: ChannelTls | None = None
    token: str | None = None
    insecure: bool = False
    max_message_bytes: int = 16 * 1024 * 1024
    keepalive: Keepalive = field(default_factory=Keepalive)
    retry: UnavailableRetry | None = None  # None: gRPC retries nothing (the caller owns the retry budget)
    reconnect_backoff_ms: tuple[int, int] | None = None  # (initial, max) reconnect backoff; None: gRPC's

    def __post_init__(self) -> None:
        target = parse_target(self.target)
        check_token_transport(target, token=self.token, tls=self.tls is not None, insecure=self.insecure)
        if len(target.addresses) > 1 and self.tls is not None and not self.tls.server_name:
            raise ConfigError(
                f"TLS to the list {target}: pass --tls-server-name, the name in the replicas' certificate "
                "(a list of IP addresses has no single name to check)"
            )

    @property
    def address(self) -> Target:
        return parse_target(self.target)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTH_HEADER, f"Bearer {self.token}"),) if self.token else ()

    def options(self) -> list[tuple[str, object]]:
        opts: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive.time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle camera stream
            # each channel its own connections: gRPC otherwise shares one among channels with equal arguments,
            # and a load probe's channels (or SO_REUSEPORT workers, balanced per connection) would see one
            ("grpc.use_local_subchannel_pool", 1),
        ]
        opts.append(("grpc.enable_retries", 0 if self.retry is None else 1))
        service_config = self.service_config()
        if service_config is not None:
            opts.append(("grpc.service_config", service_config))
        if self.reconnect_backoff_ms is not None:
            opts += [
                ("grpc.initial_reconnect_backoff_ms", self.reconnect_backoff_ms[0]),
                ("grpc.max_reconnect_backoff_ms", self.reconnect_backoff_ms[1]),
            ]
        if self.tls is not None and self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return opts

    def service_config(self) -> str | None:
        """``round_robin`` over every address of a balanced target; the retry policy, if any."""
        config: dict[str, object] = {}
        if self.address.balanced:
            config["loadBalancingConfig"] = [{"round_robin": {}}]
        if self.retry is not None:
            config["methodConfig"] = [self.retry.method_config()]
        return json.dumps(config) if config else None


def server_keepalive_options(*, min_ping_ms: int = SERVER_MIN_PING_MS) -> list[tuple[str, int]]:
    """The server side of the keepalive contract: accept client pings down to ``min_ping_ms`` apart (also
    on streams with no data flowing), and ping idle clients so dead ones are reaped."""
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


def dial(config: DialConfig) -> grpc.Channel:
    """A synchronous channel (nothing is sent until the first call)."""
    if config.tls is None:
        return grpc.insecure_channel(config.address.dial, options=config.options())
    return grpc.secure_channel(config.address.dial, config.tls.credentials(), options=config.options())


def dial_aio(config: DialConfig) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel (call inside a running event loop)."""
    if config.tls is None:
        return grpc.aio.insecure_channel(config.address.dial, options=config.options())
    return grpc.aio.secure_channel(config.address.dial, config.tls.credentials(), options=config.options())


class _Passthrough:
    """Channel wrapper for the generated stub: requests go out as the bytes given (serialised once by the
    caller); replies are parsed unless ``raw_replies`` (then bytes too)."""

    def __init__(self, channel, raw_replies: bool) -> None:
        self._channel, self._raw_replies = channel, raw_replies

    def _wrap(self, kind: str, method, request_serializer=None, response_deserializer=None, **kwargs):
        deserializer = None if self._raw_replies else response_deserializer
        factory = getattr(self._channel, kind)
        return factory(method, request_serializer=None, response_deserializer=deserializer, **kwargs)

    def unary_unary(self, method, **kwargs):
        return self._wrap("unary_unary", method, **kwargs)

    def stream_stream(self, method, **kwargs):
        return self._wrap("stream_stream", method, **kwargs)

    def unary_stream(self, method, **kwargs):  # pragma: no cover - the service has none
        return self._wrap("unary_stream", method, **kwargs)

    def stream_unary(self, method, **kwargs):  # pragma: no cover - the service has none
        return self._wrap("stream_unary", method, **kwargs)


def stub(channel, *, raw: bool = False, raw_replies: bool = False) -> pb_grpc.GRPCInferenceServiceStub:
    """The generated stub on ``channel``. ``raw``: requests are pre-serialised bytes (``raw_replies``: and
    replies stay bytes), so a request serialised once can be re-sent without protobuf cost."""
    return pb_grpc.GRPCInferenceServiceStub(_Passthrough(channel, raw_replies) if raw else channel)


def _status(exc: grpc.RpcError) -> tuple[Code, str]:
    try:
        code = Code(exc.code().name)
    except (ValueError, AttributeError):
        code = Code.INTERNAL
    try:
        details = exc.details() or code.value
    except AttributeError:
        details = str(exc)
    return code, details


def is_handshake_failure(details: str) -> bool:
    text = details.lower()
    return "handshake" in text or "ssl_error" in text or "certificate_verify" in text or "tsi_" in text


def rpc_error(
    exc: grpc.RpcError, target: str, *, timeout_s: float | None = None, what: str = "the request"
) -> ProtocolError:
    """A one-line :class:`ProtocolError` for a failed call: TLS handshake, deadline or refusal."""
    code, details = _status(exc)
    if code is Code.UNAVAILABLE and is_handshake_failure(details):
        return ProtocolError(
            code,
            f"TLS handshake with {target} failed: {_short(details)}: check --tls-ca / the "
            "server certificate (and --tls-cert/--tls-key for mutual TLS)",
        )
    if code is Code.DEADLINE_EXCEEDED:
        within = f" within the {timeout_s:g} s deadline" if timeout_s is not None else " before the deadline"
        return ProtocolError(code, f"no reply from {target}{within}")
    if code is Code.UNAVAILABLE:
        return ProtocolError(code, f"{target} is unavailable: {_short(details)}")
    if code is Code.RESOURCE_EXHAUSTED and "concurrent rpc limit" in details.lower():
        return ProtocolError(code, f"{target} is busy (at its --max-concurrent-rpcs limit): retry later")
    return ProtocolError(code, f"{target} refused {what}: {details}")


def _short(details: str) -> str:
    """gRPC's connection errors repeat the address and nest causes; keep the last, most specific part."""
    last = details.rsplit("last error:", 1)[-1].strip()
    for sep in ("OPENSSL_internal:", "SSL_ERROR_SSL:"):
        if sep in last:
            last = last.rsplit(sep, 1)[-1].strip()
    last = re.sub(r"^[A-Z_]+: (ipv4|ipv6|unix|dns)[^ ]*: ", "", last)  # "UNAVAILABLE: ipv4:1.2.3.4:5: " prefix
    return last.removesuffix(": OK")[:200]


def stream_error(message: str) -> tuple[Code, str]:
    """``(code, message)`` of a streamed reply's ``error_message`` (``"CODE: text"``)."""
    name = message.split(":", 1)[0]
    return (Code(name) if name in Code.__members__ else Code.INTERNAL), message
