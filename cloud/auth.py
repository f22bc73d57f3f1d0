"""Bearer-token authentication (``authorization: Bearer <token>`` metadata: one shared token and/or per-device
tokens, :mod:`privsplit.cloud.devices`) and TLS credentials."""

from __future__ import annotations

import hmac

import grpc

from privsplit.cloud.config import TlsConfig
from privsplit.cloud.devices import DeviceTokens, token_digest
from privsplit.errors import ConfigError

AUTH_HEADER = "authorization"
# Kubernetes-style probes cannot send metadata: health checks need no token (they reveal only liveness).
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny_handler(handler, message: str):
    """A handler of the same kind as ``handler`` that refuses with UNAUTHENTICATED."""

    def refuse(_request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class Caller:
    """Who a call comes from, as the token interceptor established it: a device of ``--device-tokens`` (its id
    and token digest, re-checked on each message of a stream) or None (the shared ``--token-file`` token)."""

    __slots__ = ("device", "digest")

    def __init__(self, device: str, digest: str) -> None:
        self.device, self.digest = device, digest


class CallerContext:
    """A servicer context that also carries the :class:`Caller` (everything else is the gRPC context's)."""

    __slots__ = ("_context", "caller")

    def __init__(self, context, caller: Caller) -> None:
        self._context, self.caller = context, caller

    def __getattr__(self, name):
        return getattr(self._context, name)


def _with_caller(handler, caller: Caller):
    """``handler`` with its behaviour called on a :class:`CallerContext`."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:

            def wrapped(request, context, _behaviour=behaviour):
                return _behaviour(request, CallerContext(context, caller))

            return handler._replace(**{kind: wrapped})
    return handler


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse every RPC (health checks aside) whose metadata lacks ``authorization: Bearer <token>`` with the
    shared ``token`` or a device's token from ``devices`` (:class:`~privsplit.cloud.devices.DeviceTokens`).

    The shared token is compared in constant time (:func:`hmac.compare_digest`) over the whole header value;
    a device token is looked up by its sha256 (the file holds digests only). A device's calls carry a
    :class:`Caller` (``context.caller``) for rate limiting, logs and the re-check of streams.
    """

    def __init__(self, token: str | None = None, *, devices: DeviceTokens | None = None, on_refuse=None) -> None:
        if token is None and devices is None:
            raise ConfigError("token auth needs a --token-file or --device-tokens")
        if token is not None and not token:
            raise ConfigError("the bearer token is empty")
        self._expected = None if token is None else f"Bearer {token}".encode()
        self._devices = devices
        self._on_refuse = on_refuse or (lambda: None)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        value = None
        for key, val in handler_call_details.invocation_metadata or ():
            if key == AUTH_HEADER:
                value = val if isinstance(val, str) else bytes(val).decode("utf-8", "replace")
                break
        if value is not None:
            if self._expected is not None and hmac.compare_digest(value.encode(), self._expected):
                return continuation(handler_call_details)
            presented = value[7:] if value.startswith("Bearer ") else None
            if self._devices is not None and presented:
                device = self._devices.identify(presented)
                if device is not None:
                    handler = continuation(handler_call_details)
                    return None if handler is None else _with_caller(handler, Caller(device, token_digest(presented)))
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        self._on_refuse()
        if value is None:
            message = f"missing '{AUTH_HEADER}: Bearer <token>' metadata"
        else:
            revoked = None if self._devices is None else self._devices.revoked(value.removeprefix("Bearer "))
            if revoked is not None:
                message = (
                    f"device {revoked!r} was revoked (its line left --device-tokens); "
                    "issue it a new token with `privsplit devices add` if that was a mistake"
                )
            else:
                message = "invalid bearer token"
        return _deny_handler(handler, message)


SERVABLE_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def check_servable_certificate(pem: bytes, path) -> None:
    """gRPC's TLS stack signs handshakes with RSA or ECDSA (P-256/384/521) keys only: an Ed25519/Ed448/DSA
    certificate loads fine but every handshake then fails (NO_COMMON_SIGNATURE_ALGORITHMS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        public = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError as exc:
        raise ConfigError(f"--tls-cert {path}: not a PEM certificate ({exc})") from None
    if isinstance(public, rsa.RSAPublicKey):
        return
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in SERVABLE_CURVES:
        return
    curve = getattr(getattr(public, "curve", None), "name", None)
    kind = curve or type(public).__name__.removeprefix("_").replace("PublicKey", "")
    raise ConfigError(
        f"--tls-cert {path}: gRPC cannot serve a {kind} certificate (clients fail the TLS handshake): issue it "
        "for an RSA or EC P-256 key (openssl: -newkey ec -pkeyopt ec_paramgen_curve:prime256v1)"
    )


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS (``client_ca`` None) or mutual TLS credentials from PEM files (the key type checked first)."""
    cert, key, client_ca = tls.read()
    check_servable_certificate(cert, tls.cert)
    try:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except Exception as exc:  # grpc raises plain exceptions for unusable PEM data
        raise ConfigError(f"--tls-cert/--tls-key/--client-ca are not usable PEM files: {exc}") from None
