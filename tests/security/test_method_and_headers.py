"""Method and header tricks: the permission is decided on the method the upstream acts on, identity headers
cannot be forged or removed by the client, and X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CREATOR, READER

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x-http-method-override"]
)
async def test_method_override_headers_never_reach_the_upstream(gateway, upstream, header):
    r = await gateway.get(f"/v1/leads/search?auth_token={READER}", headers={header: "DELETE"})
    assert r.status == 200
    received = upstream.last()
    assert received.method == "GET"
    assert not {"x-http-method-override", "x-http-method", "x-method-override"} & received.header_names()


@pytest.mark.parametrize(
    "query",
    [
        "_method=DELETE",
        "_METHOD=DELETE",
        "%5Fmethod=DELETE",
        ".method=DELETE",  # PHP files `.method` under `_method`
        "+_method=DELETE",  # a leading (form-encoded) space is dropped
        "_method[]=DELETE",
        "a=1&_method=PUT&b=2",
    ],
)
async def test_a_method_parameter_in_the_query_is_removed(gateway, upstream, query):
    r = await gateway.get(f"/v1/leads/search?auth_token={READER}&{query}")
    assert r.status == 200
    received = upstream.last()
    assert received.method == "GET"
    assert "method" not in received.query.lower()
    if "a=1" in query:
        assert received.query == "a=1&b=2"


async def test_a_method_parameter_in_a_form_body_is_removed(gateway, upstream):
    body = f"auth_token={CREATOR}&_method=DELETE&first_name=Ann"
    r = await gateway.post("/v1/leads/insert", data=body, headers=FORM)
    assert r.status == 200
    assert upstream.last().method == "POST"
    assert upstream.last().body == b"first_name=Ann"


async def test_a_method_parameter_in_a_json_body_is_removed(gateway, upstream):
    body = json.dumps({"_method": "DELETE", "first_name": "Ann"})
    r = await gateway.post(
        "/v1/leads/insert",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CREATOR}"},
    )
    assert r.status == 200
    assert json.loads(upstream.last().body) == {"first_name": "Ann"}


async def test_a_method_parameter_in_a_multipart_body_is_removed(gateway, upstream):
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="first_name"\r\n\r\nAnn\r\n--XyZ--\r\n'
    )
    r = await gateway.post(
        "/v1/leads/insert",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ", "Authorization": f"Bearer {CREATOR}"},
    )
    assert r.status == 200
    forwarded = upstream.last().body
    assert b"_method" not in forwarded and b"DELETE" not in forwarded
    assert b'name="first_name"' in forwarded


async def test_a_method_parameter_is_removed_even_when_the_body_field_is_off(start_gateway, upstream):
    gateway = await start_gateway({"credentials": {"body_field": "off"}})
    r = await gateway.post(
        "/v1/leads/insert",
        data="_method=DELETE&first_name=Ann",
        headers={**FORM, "Authorization": f"Bearer {CREATOR}"},
    )
    assert r.status == 200
    assert upstream.last().body == b"first_name=Ann"


@pytest.mark.parametrize(
    "named", ["X-Gateway-Token-Id", "X-Gateway-Token-Name, X-Request-Id", "X-Forwarded-For"]
)
async def test_connection_cannot_remove_identity_headers(gateway, upstream, named):
    r = await gateway.get(
        f"/v1/leads/search?auth_token={READER}",
        headers={"Connection": f"keep-alive, {named}", "X-Gateway-Token-Id": "tok_forged"},
    )
    assert r.status == 200
    received = upstream.last()
    assert received.header("X-Gateway-Token-Name") == "reader"
    assert received.header("X-Gateway-Token-Id") not in (None, "tok_forged")
    assert received.header("X-Request-Id") == r.headers["X-Request-Id"]
    assert received.header("X-Forwarded-For") == "127.0.0.1"


async def test_forwarded_for_from_an_untrusted_client_is_replaced(gateway, upstream):
    r = await gateway.get(
        f"/v1/leads/search?auth_token={READER}",
        headers={
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=10.0.0.1",
            "X-Real-IP": "10.0.0.1",
        },
    )
    assert r.status == 200
    received = upstream.last()
    assert received.header("X-Forwarded-For") == "127.0.0.1"
    assert received.header("X-Forwarded-Proto") == "http"
    assert received.header("X-Forwarded-Host") != "evil.example"
    assert "forwarded" not in received.header_names() and "x-real-ip" not in received.header_names()


async def test_forwarded_for_from_a_trusted_proxy_is_extended(start_gateway, upstream):
    gateway = await start_gateway({"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    r = await gateway.get(f"/v1/leads/search?auth_token={READER}", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status == 200
    assert upstream.last().header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
