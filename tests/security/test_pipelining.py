"""Pipelining: every request on a connection is authorised on its own; nothing carries over from the one before."""

from __future__ import annotations

from tests.conftest import CREATOR, READER, wait_until
from tests.security.wire import exchange, request, responses_count


async def test_fifty_pipelined_requests_one_without_a_token(gateway, upstream):
    lacking = 17
    data = b"".join(
        request(
            "GET",
            f"/v1/leads/search?n={i}",
            [] if i == lacking else [("Authorization", f"Bearer {READER}")],
            close=i == 49,
        )
        for i in range(50)
    )
    result = await exchange(gateway.port, data, timeout=10, until=responses_count(50))
    responses = result.responses
    assert [r.status for r in responses] == [401 if i == lacking else 200 for i in range(50)]
    assert [r.target for r in upstream.received] == [
        f"/v1/leads/search?n={i}" for i in range(50) if i != lacking
    ]
    assert all(r.header("X-Gateway-Token-Name") == "reader" for r in upstream.received)
    records = await wait_until(lambda: len(gateway.log_lines()) == 50 and gateway.log_lines())
    outcomes = {r["query"]: r["outcome"] for r in records}
    assert outcomes.pop(f"n={lacking}") == "missing"
    assert set(outcomes.values()) == {"allowed"}


async def test_alternating_tokens_and_methods_are_each_decided_on_their_own(gateway, upstream):
    # The creator may insert and not search; the reader may search and not insert. Interleaved on one connection.
    pipeline = []
    expected = []
    for i in range(20):
        token = CREATOR if i % 2 == 0 else READER
        if i % 4 < 2:
            pipeline.append(
                request(
                    "POST",
                    f"/v1/leads/insert?n={i}",
                    [("Content-Type", "application/x-www-form-urlencoded")],
                    f"auth_token={token}&first_name=Ann".encode(),
                )
            )
            expected.append(200 if token == CREATOR else 403)
        else:
            pipeline.append(request("GET", f"/v1/leads/search?n={i}&auth_token={token}"))
            expected.append(200 if token == READER else 403)
    result = await exchange(gateway.port, b"".join(pipeline), timeout=10, until=responses_count(20))
    assert [r.status for r in result.responses] == expected
    forwarded = [r.target for r in upstream.received]
    assert len(forwarded) == expected.count(200)
    for received in upstream.received:
        assert READER not in received.target and CREATOR not in received.target
        assert READER.encode() not in received.body and CREATOR.encode() not in received.body
        n = int(received.query.partition("n=")[2].partition("&")[0])
        assert expected[n] == 200


async def test_a_refused_request_with_an_unread_body_does_not_leak_into_the_next(gateway, upstream):
    # The first request is refused before its body is read; the body must be skipped, not parsed as a request.
    smuggled = request("GET", "/v1/admin/users", [("Authorization", f"Bearer {READER}")])
    first = request("POST", "/v1/leads/search", [("Content-Type", "application/octet-stream")], smuggled)
    second = request("GET", "/v1/leads/search?n=2", [("Authorization", f"Bearer {READER}")], close=True)
    result = await exchange(gateway.port, first + second, timeout=5)
    assert [r.status for r in result.responses] == [401, 200]
    assert [r.target for r in upstream.received] == ["/v1/leads/search?n=2"]


async def test_bytes_after_an_upgrade_request_are_a_new_request_authorised_on_their_own(gateway, upstream):
    upgrade = request(
        "GET",
        "/v1/leads/search",
        [("Authorization", f"Bearer {READER}"), ("Connection", "Upgrade"), ("Upgrade", "websocket")],
    )
    smuggled = request("GET", "/v1/admin/users", close=True)
    result = await exchange(gateway.port, upgrade + smuggled, timeout=5)
    assert [r.status for r in result.responses] == [200, 401]
    assert [r.target for r in upstream.received] == ["/v1/leads/search"]
    assert "upgrade" not in upstream.last().header_names()
