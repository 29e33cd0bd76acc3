"""The agent API's one bearer-token check (agent.api.bearer) and both fronts through it: the HTTP routes and the gRPC
handlers admit the same values, refuse the same others, and stay open without a token."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.api.bearer import admits, expected
from agent.api.http_request import HTTPError
from agent.api.routes import V2Routes
from agent.serving.table import ModelTable

TOKEN = "t0ken"
REFUSED = [None, "", "Bearer", "Bearer ", "Bearer wrong", "bearer t0ken", "Bearer t0ken ", "t0ken", b"Bearer t0ke"]


def test_the_token_admits_its_bearer_value_only():
    bearer = expected(TOKEN)
    assert bearer == b"Bearer t0ken"
    assert admits("Bearer t0ken", bearer) and admits(b"Bearer t0ken", bearer)
    assert [given for given in REFUSED if admits(given, bearer)] == []


def test_no_token_is_an_open_api():
    assert expected(None) is None and expected("") is None  # an empty token file is no token
    assert all(admits(given, None) for given in [*REFUSED, "Bearer t0ken"])


def _http(routes: V2Routes, path: str, authorization: str | None = None) -> int:
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        return routes(SimpleNamespace(method="GET", path=path, headers=headers)).status
    except HTTPError as exc:
        return exc.status


def test_the_http_routes_refuse_without_the_token_but_on_health():
    routes = V2Routes(ModelTable(), lambda: True, token=TOKEN)
    assert _http(routes, "/v2") == 401 and _http(routes, "/v2", "Bearer wrong") == 401
    assert _http(routes, "/v2", "Bearer t0ken") == 200 and _http(routes, "/v2/health/live") == 200
    assert _http(V2Routes(ModelTable(), lambda: True), "/v2") == 200


class _Refused(Exception):
    pass


def _grpc(server, method: str, authorization: str | bytes | None = None) -> str:
    metadata = [("user-agent", "test")] + ([] if authorization is None else [("authorization", authorization)])

    def abort(code, message):
        raise _Refused(code.name)

    context = SimpleNamespace(invocation_metadata=lambda: metadata, abort=abort)
    try:
        return server._handler(method, lambda request: "answered")(None, context)
    except _Refused as exc:
        return str(exc)


def test_the_grpc_handlers_refuse_without_the_token_but_on_health():
    pytest.importorskip("grpc")
    from agent.api.grpc_server import GrpcServer

    server = GrpcServer(ModelTable(), token=TOKEN)
    assert _grpc(server, "ServerMetadata") == "UNAUTHENTICATED"
    assert _grpc(server, "ServerMetadata", "Bearer wrong") == "UNAUTHENTICATED"
    assert _grpc(server, "ServerMetadata", "Bearer t0ken") == "answered"
    assert _grpc(server, "ServerMetadata", b"Bearer t0ken") == "answered"
    assert _grpc(server, "ServerLive") == "answered"
    assert _grpc(GrpcServer(ModelTable()), "ServerMetadata") == "answered"
