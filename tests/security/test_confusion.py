"""Path confusion and parameter pollution, through the gateway: the route is decided on exactly the path the upstream
receives, and a token spread over several places is one consistent token or a 400, never forwarded."""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.paths import normalise
from tests.conftest import LEADS, READER, wait_until
from tests.security.wire import exchange

# Pieces of paths that have bypassed gateways: dot segments in every spelling, encoded separators, double
# encoding, path parameters, backslashes, NUL, overlong UTF-8, fragments, and route names to climb between.
_PIECES = (
    r"/ // . .. %2e %2E %2e%2e %2E%2e .%2e %2f %2F %5c %5C %252e %252f ..; ; \ %00 %0a %c0%ae %C0%AF %e0%80%ae"
    r" # v1 leads search admin reports %61dmin %6c%65%61%64%73 x ?a=1"
).split()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.tuples(
        st.sampled_from(["/", "/v1/", "/v1/leads/", "/v1/leads/search/", "/v1/admin/", "/v1/leads/x/../"]),
        st.lists(st.sampled_from(_PIECES), min_size=1, max_size=10).map("".join),
    ).map("".join)
)
async def test_the_upstream_only_receives_paths_routed_as_authorised(gateway, upstream, target):
    """The reader token holds leads:read only: whatever it gets forwarded must route to a leads:read route."""
    before = len(upstream.received)
    data = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\nConnection: close\r\n\r\n"
    result = await exchange(gateway.port, data.encode(), timeout=5)
    (response,) = result.responses
    assert response.status in (200, 400, 403), response
    router = gateway.worker.gateway.router
    if response.status != 200:
        assert len(upstream.received) == before
        return
    (received,) = upstream.received[before:]
    path = received.path
    assert normalise(path)[0] == path, "the upstream got a path that is not canonical"
    route = router.route(path, "GET", allow_unmatched=False)
    assert route is not None and route.permission == "leads:read", (target, path)
    logged = await wait_until(
        lambda: [r for r in gateway.log_lines() if r["request_id"] == received.header("X-Request-Id")]
    )
    assert logged[0]["route"] == route.pattern and logged[0]["path"] == path


# --- parameter pollution -----------------------------------------------------------------------------------------

QUERY_SPELLINGS = ["auth_token", "AUTH_TOKEN", "auth_token[]", "Auth.Token", "auth%5Ftoken"]
BODY_SPELLINGS = ["auth_token", "AUTH_TOKEN", "auth_token[]"]
OTHER = "some-other-token-value"


def _body(kind: str, name: str, value: str) -> tuple[str, bytes]:
    if kind == "form":
        return "application/x-www-form-urlencoded", f"{name}={value}&first_name=Ann".encode()
    if kind == "multipart":
        return "multipart/form-data; boundary=B0und", (
            f'--B0und\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            '--B0und\r\nContent-Disposition: form-data; name="first_name"\r\n\r\nAnn\r\n--B0und--\r\n'
        ).encode()
    return "application/json", json.dumps({name: value, "first_name": "Ann"}).encode()


def _cases():
    queries = [
        [],
        *([q] for q in QUERY_SPELLINGS),
        ["auth_token", "AUTH_TOKEN"],
        ["auth_token[]", "Auth.Token"],
    ]
    bodies = [None, *((kind, name) for kind in ("form", "multipart", "json") for name in BODY_SPELLINGS)]
    for query, body, bearer in itertools.product(queries, bodies, (False, True)):
        places = len(query) + (body is not None) + bearer
        if places:
            yield query, body, bearer


CASES = list(_cases())


def _request(query: list[str], body: tuple[str, str] | None, bearer: bool, odd_one: int | None) -> bytes:
    """POST /v1/leads/insert with the token in the given places; place number `odd_one` holds another value."""
    place = itertools.count()
    params = [f"{name}={OTHER if next(place) == odd_one else LEADS}" for name in query]
    target = "/v1/leads/insert?" + "&".join([*params, "list_id=5"])
    headers = ["Host: x", "Connection: close"]
    payload = b""
    if body is not None:
        content_type, payload = _body(body[0], body[1], OTHER if next(place) == odd_one else LEADS)
        headers += [f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
    else:
        headers.append("Content-Length: 0")
    if bearer:
        headers.append(f"Authorization: Bearer {OTHER if next(place) == odd_one else LEADS}")
    head = "".join(line + "\r\n" for line in [f"POST {target} HTTP/1.1", *headers])
    return (head + "\r\n").encode() + payload


def _carries(received, secret: str) -> bool:
    return (
        secret in received.target
        or secret.encode() in received.body
        or any(secret in value for _, value in received.headers)
    )


async def test_one_token_in_many_places_is_one_token_and_every_copy_is_removed(gateway, upstream):
    for query, body, bearer in CASES:
        case = (query, body, bearer)
        result = await exchange(gateway.port, _request(query, body, bearer, None), timeout=5)
        assert [r.status for r in result.responses] == [200], (case, result.data)
        received = upstream.last()
        assert not _carries(received, LEADS), case
        assert received.header("X-Gateway-Token-Name") == "leads-all"
        assert "list_id=5" in received.query
    assert len(upstream.received) == len(CASES)


async def test_a_different_value_in_any_place_is_400_and_nothing_is_forwarded(gateway, upstream):
    for query, body, bearer in CASES:
        places = len(query) + (body is not None) + bearer
        for odd_one in range(places if places > 1 else 0):
            result = await exchange(gateway.port, _request(query, body, bearer, odd_one), timeout=5)
            (response,) = result.responses
            assert response.status == 400, (query, body, bearer, odd_one)
            assert response.json() == {"success": False, "error": "Multiple authentication tokens supplied"}
    assert upstream.received == []


async def test_a_token_nested_inside_json_is_data_not_a_credential(gateway, upstream):
    body = json.dumps({"data": {"auth_token": LEADS}}).encode()
    data = (
        b"POST /v1/leads/insert HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    result = await exchange(gateway.port, data)
    assert [r.status for r in result.responses] == [401]
    assert upstream.received == []
