"""Bearer-token authentication (``authorization: Bearer <token>`` metadata) and TLS credentials."""

from __future__ import annotations

import hmac

import grpc

from privsplit.cloud.config import TlsConfig
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


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse every RPC (health checks aside) whose metadata lacks ``authorization: Bearer <token>``.

    The comparison is constant-time (:func:`hmac.compare_digest`) over the whole header value.
    """

    def __init__(self, token: str, *, on_refuse=None) -> None:
        if not token:
            raise ConfigError("the bearer token is empty")
        self._expected = f"Bearer {token}".encode()
        self._on_refuse = on_refuse or (lambda: None)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        value = None
        for key, val in handler_call_details.invocation_metadata or ():
            if key == AUTH_HEADER:
                value = val
                break
        if value is not None and hmac.compare_digest(
            value.encode() if isinstance(value, str) else bytes(value), self._expected
        ):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        self._on_refuse()
        if value is None:
            message = f"missing '{AUTH_HEADER}: Bearer <token>' metadata"
        else:
            message = "invalid bearer token"
        return _deny_handler(handler, message)


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS (``client_ca`` None) or mutual TLS credentials from PEM files."""
    cert, key, client_ca = tls.read()
    try:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except Exception as exc:  # grpc raises plain exceptions for unusable PEM data
        raise ConfigError(f"--tls-cert/--tls-key/--client-ca are not usable PEM files: {exc}") from None
