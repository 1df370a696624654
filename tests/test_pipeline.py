"""The core pipeline through real sockets: credentials, decisions, what the upstream receives."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import (
    ADMIN,
    BIG,
    CREATOR,
    EXPIRED,
    FUTURE,
    LEADS,
    PARTNER,
    READER,
    big_body,
)

MISSING = {"success": False, "error": "Missing authentication token"}
INVALID = {"success": False, "error": "Invalid or expired authentication token"}
FORBIDDEN = {"success": False, "error": "Insufficient permissions for this operation"}
CONFLICT = {"success": False, "error": "Multiple authentication tokens supplied"}
MALFORMED = {"success": False, "error": "Malformed request"}


async def refused(response, status: int, body: dict) -> None:
    assert response.status == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-Id"]
    assert json.loads(await response.read()) == body


# --- the three credential places ---------------------------------------------------------------------------------


async def test_token_in_query_is_allowed_and_removed_before_forwarding(gateway, upstream):
    r = await gateway.get(f"/v1/leads/search?list_id=5&auth_token={READER}&x=1")
    assert r.status == 200
    assert r.headers["X-Upstream"] == "yes"
    seen = upstream.last()
    assert seen.target == "/v1/leads/search?list_id=5&x=1"
    assert READER not in repr(seen)
    assert seen.header("X-Gateway-Token-Name") == "reader"
    assert seen.header("X-Gateway-Token-Id").startswith("tok_")
    assert seen.header("X-Request-Id") == r.headers["X-Request-Id"]


async def test_bearer_header_is_allowed_and_removed(gateway, upstream):
    r = await gateway.get("/v1/leads/search", headers={"Authorization": f"Bearer {READER}"})
    assert r.status == 200
    seen = upstream.last()
    assert "authorization" not in seen.header_names()
    assert READER not in repr(seen)


async def test_basic_authorization_is_not_a_credential_and_passes_through(gateway, upstream):
    r = await gateway.get(
        f"/v1/leads/search?auth_token={READER}", headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    assert r.status == 200
    assert upstream.last().header("Authorization") == "Basic dXNlcjpwYXNz"


async def test_form_body_token_is_allowed_and_body_reencoded(gateway, upstream):
    body = f"first_name=Ann&auth_token={CREATOR}&phone=555"
    r = await gateway.post(
        "/v1/leads/insert", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status == 200
    seen = upstream.last()
    assert seen.body == b"first_name=Ann&phone=555"
    assert seen.header("Content-Length") == str(len(seen.body))
    assert CREATOR not in repr(seen)


async def test_json_body_token_is_allowed_and_removed(gateway, upstream):
    body = json.dumps({"first_name": "Ann", "auth_token": CREATOR, "n": 12345678901234567890123})
    r = await gateway.post("/v1/leads/insert", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 200
    seen = upstream.last()
    assert json.loads(seen.body) == {"first_name": "Ann", "n": 12345678901234567890123}
    assert seen.header("Content-Length") == str(len(seen.body))
    assert CREATOR not in repr(seen)


async def test_multipart_token_is_allowed_and_part_removed(gateway, upstream):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("first_name", "Ann")
    form.add_field("auth_token", CREATOR)
    form.add_field("file", b"\x00\x01binary", filename="a.bin", content_type="application/octet-stream")
    r = await gateway.post("/v1/leads/insert", data=form)
    assert r.status == 200
    seen = upstream.last()
    assert CREATOR.encode() not in seen.body
    assert b"Ann" in seen.body and b"\x00\x01binary" in seen.body
    assert seen.header("Content-Length") == str(len(seen.body))


async def test_same_token_in_several_places_is_fine(gateway, upstream):
    r = await gateway.post(
        f"/v1/leads/insert?auth_token={CREATOR}",
        data=f"auth_token={CREATOR}",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {CREATOR}"},
    )
    assert r.status == 200
    seen = upstream.last()
    assert CREATOR not in repr(seen)
    assert seen.target == "/v1/leads/insert"
    assert seen.body == b""


async def test_forward_true_keeps_the_credential(start_gateway, upstream):
    gw = await start_gateway({"credentials": {"forward": True}})
    r = await gw.get(f"/v1/leads/search?auth_token={READER}")
    assert r.status == 200
    assert upstream.last().target == f"/v1/leads/search?auth_token={READER}"


# --- refusals: exact status and body; the upstream sees nothing ----------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers", "status", "body"),
    [
        ("/v1/leads/search", {}, 401, MISSING),
        ("/v1/leads/search?auth_token=", {}, 401, MISSING),
        ("/v1/leads/search?auth_token=nope", {}, 401, INVALID),
        (f"/v1/leads/search?auth_token={FUTURE}", {}, 401, INVALID),
        (f"/v1/leads/search?auth_token={EXPIRED}", {}, 401, INVALID),
        (f"/v1/admin/users?auth_token={READER}", {}, 403, FORBIDDEN),
        (f"/v1/leads/search?auth_token={READER}", {"Authorization": f"Bearer {ADMIN}"}, 400, CONFLICT),
        (f"/v1/leads/search?auth_token={READER}&auth_token={ADMIN}", {}, 400, CONFLICT),
        (f"/nowhere?auth_token={ADMIN}", {}, 403, FORBIDDEN),
    ],
    ids=[
        "missing",
        "empty",
        "invalid",
        "not-yet-active",
        "expired",
        "forbidden",
        "conflict-header",
        "conflict-repeat",
        "no-route",
    ],
)
async def test_refusals(gateway, upstream, target, headers, status, body):
    r = await gateway.get(target, headers=headers)
    await refused(r, status, body)
    assert upstream.received == []


async def test_401_carries_www_authenticate(gateway):
    r = await gateway.get("/v1/leads/search")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await gateway.get("/v1/leads/search?auth_token=nope")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_revoked_token_is_refused(gateway, upstream):
    store = gateway.worker.store
    token = await store.get("reader")
    await store.update_token(token.id, revoked_at=1.0, revoked_by="admin")
    await gateway.worker.cache.poll_changes()
    r = await gateway.get(f"/v1/leads/search?auth_token={READER}")
    await refused(r, 401, INVALID)
    assert upstream.received == []
    assert gateway.worker.access_log is not None


async def test_activation_and_expiry_follow_the_clock(start_gateway, upstream):
    now = [0.0]
    gw = await start_gateway(clock=lambda: now[0])
    store = gw.worker.store
    token = await store.get("reader")
    await store.update_token(token.id, not_before=1000.0, expires=2000.0)
    await gw.worker.cache.poll_changes()
    for t, status in ((999.0, 401), (1000.0, 200), (1999.9, 200), (2000.0, 401)):
        now[0] = t
        r = await gw.get(f"/v1/leads/search?auth_token={READER}")
        assert r.status == status, t


@pytest.mark.parametrize(
    ("secret", "status"),
    [(READER, 403), (CREATOR, 200), (LEADS, 200), (ADMIN, 200)],
    ids=["leads:read", "leads:create", "leads", "*"],
)
async def test_leads_create_route_needs_the_permission(gateway, upstream, secret, status):
    r = await gateway.post(f"/v1/leads/insert?auth_token={secret}")
    assert r.status == status
    assert len(upstream.received) == (1 if status == 200 else 0)


async def test_unmatched_routes_may_allow_any_valid_token(start_gateway, upstream):
    gw = await start_gateway({"server": {"unmatched": "allow-authenticated"}})
    assert (await gw.get(f"/nowhere?auth_token={READER}")).status == 200
    assert (await gw.get("/nowhere")).status == 401


# --- identity headers ----------------------------------------------------------------------------------------------


async def test_spoofed_identity_headers_are_removed(gateway, upstream):
    r = await gateway.get(
        f"/v1/leads/search?auth_token={READER}",
        headers={
            "X-Gateway-Token-Id": "tok_forged",
            "X-Gateway-Token-Name": "admin",
            "X-Gateway-Company": "Evil",
            "X-Gateway-Anything": "1",
            "Connection": "X-Gateway-Token-Id, X-Gateway-Token-Name",
            "X-Forwarded-For": "10.9.9.9",
        },
    )
    assert r.status == 200
    seen = upstream.last()
    ids = [v for k, v in seen.headers if k.lower() == "x-gateway-token-id"]
    assert len(ids) == 1 and ids[0].startswith("tok_") and ids[0] != "tok_forged"
    assert seen.header("X-Gateway-Token-Name") == "reader"
    assert seen.header("X-Gateway-Company") is None
    assert seen.header("X-Gateway-Anything") is None
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"


async def test_external_token_forwards_its_company(gateway, upstream):
    r = await gateway.get(f"/v1/cases/history?auth_token={PARTNER}")
    assert r.status == 200
    assert upstream.last().header("X-Gateway-Company") == "Acme"


async def test_trusted_proxy_forwarded_for_is_kept(start_gateway, upstream):
    gw = await start_gateway({"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    await gw.get(f"/v1/leads/search?auth_token={READER}", headers={"X-Forwarded-For": "203.0.113.7"})
    assert upstream.last().header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"


# --- paths ---------------------------------------------------------------------------------------------------------


async def test_dot_segments_are_resolved_and_the_resolved_path_is_authorised_and_forwarded(gateway, upstream):
    # /v1/leads/../admin/x is /v1/admin/x: a reader may not go there, however it is spelled.
    for target in ("/v1/leads/../admin/x", "/v1/leads/%2e%2e/admin/x", "/v1/leads/%2E./admin/x"):
        r = await gateway.get(f"{target}?auth_token={READER}")
        assert r.status == 403, target
    assert upstream.received == []
    r = await gateway.get(f"/v1/leads/../admin/x?auth_token={ADMIN}")
    assert r.status == 200
    assert upstream.last().path == "/v1/admin/x"
    r = await gateway.get(f"/v1/reports//daily/./x?auth_token={ADMIN}")
    assert upstream.last().path == "/v1/reports/daily/x"


@pytest.mark.parametrize(
    "target",
    [
        "/v1/leads/..%2fadmin/x",
        "/v1/leads%2Fsearch",
        "/v1/leads/%5c..%5cadmin",
        "/v1/leads/%00",
        "/../etc/passwd",
        "/v1/leads/..;/admin",
    ],
)
async def test_unsafe_paths_are_400(gateway, upstream, target):
    r = await gateway.get(f"{target}?auth_token={ADMIN}")
    await refused(r, 400, MALFORMED)
    assert upstream.received == []


# --- forwarding ----------------------------------------------------------------------------------------------------


async def test_upstream_status_headers_and_redirects_are_relayed(gateway, upstream):
    r = await gateway.get(f"/v1/leads/status/418?auth_token={READER}")
    assert r.status == 418 and r.headers["X-Upstream"] == "yes"
    r = await gateway.get(f"/v1/leads/redirect?auth_token={READER}")
    assert r.status == 302
    assert r.headers["Location"] == "http://169.254.169.254/latest/meta-data/"
    assert len(upstream.received) == 2  # relayed, not followed


async def test_gzip_response_passes_through_with_consistent_headers(gateway):
    import gzip

    r = await gateway.get(f"/v1/leads/gzip?auth_token={READER}")
    raw = await r.read()
    assert r.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b'{"compressed": true}'
    assert int(r.headers["Content-Length"]) == len(raw)


async def test_head_and_204(gateway):
    r = await gateway.request("HEAD", f"/v1/leads/search?auth_token={READER}")
    assert r.status == 200 and await r.read() == b""
    r = await gateway.get(f"/v1/leads/status/204?auth_token={READER}")
    assert r.status == 204 and await r.read() == b""


async def test_5mb_upload_and_download_stream_intact(gateway, upstream):
    payload = big_body(BIG)
    r = await gateway.post(
        f"/v1/leads/sha256?auth_token={LEADS}",
        data=payload,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 200
    assert (await r.json())["sha256"] == hashlib.sha256(payload).hexdigest()
    r = await gateway.get(f"/v1/leads/big?auth_token={READER}")
    assert r.status == 200
    assert hashlib.sha256(await r.read()).hexdigest() == hashlib.sha256(big_body(BIG)).hexdigest()


async def test_gzip_form_body_is_decoded_so_the_token_is_found(gateway, upstream):
    import gzip

    body = gzip.compress(f"a=1&auth_token={CREATOR}".encode())
    r = await gateway.post(
        "/v1/leads/insert",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
    )
    assert r.status == 200
    seen = upstream.last()
    assert seen.body == b"a=1"
    assert seen.header("Content-Encoding") is None
    assert seen.header("Content-Length") == "3"


async def test_body_over_max_body_is_413(start_gateway, upstream):
    gw = await start_gateway({"server": {"max_body": "1KB"}})
    r = await gw.post(
        f"/v1/leads/insert?auth_token={CREATOR}",
        data=b"x" * 2048,
        headers={"Content-Type": "application/octet-stream"},
    )
    await refused(r, 413, {"success": False, "error": "Request body too large"})
    assert upstream.received == []


async def test_upstream_down_is_502(start_gateway, upstream):
    from tests.conftest import free_port

    gw = await start_gateway(upstream_url=f"http://127.0.0.1:{free_port()}")
    r = await gw.get(f"/v1/leads/search?auth_token={READER}")
    await refused(r, 502, {"success": False, "error": "Upstream unavailable"})


async def test_upstream_slow_is_504(gateway, upstream):
    r = await gateway.get(f"/v1/leads/slow?delay=5&auth_token={ADMIN}")
    await refused(r, 504, {"success": False, "error": "Upstream timed out"})


async def test_two_content_types_are_malformed(gateway, upstream):
    from tests.conftest import raw_exchange, status_of

    body = f"auth_token={CREATOR}"
    request = (
        "POST /v1/leads/insert HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()
    assert status_of(await raw_exchange(gateway.port, request)) == 400
    assert upstream.received == []
