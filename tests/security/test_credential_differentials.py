"""Issue 10 items 4, 5 and 7, and cookies: the gateway decides on token A while the upstream would read token B.

Every place a common upstream framework reads the credential field is either read by the gateway (decided on and,
with `forward = false`, removed) or the request is refused with 400. The reader token (leads:read) is always the one
the gateway could decide on; the creator token (leads:create) is the one smuggled past it.
"""

from __future__ import annotations

import gzip

import pytest

from tests.conftest import CREATOR, READER, wait_until
from tests.security.wire import MALFORMED, exchange, request

CONFLICT = {"success": False, "error": "Multiple authentication tokens supplied"}


async def send(gateway, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""):
    result = await exchange(gateway.port, request(method, target, headers, body, close=True), timeout=5)
    (response,) = result.responses
    return response


# --- item 4: `;` separates query parameters for Rack < 3 and Go < 1.17 ---------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"x=1;auth_token={CREATOR}&auth_token={READER}",
        f"auth_token={READER}&x=1;auth_token={CREATOR}",
        f"auth_token={READER};auth_token={CREATOR}",
        f"x=1;AUTH_TOKEN={CREATOR}&auth_token={READER}",
        f"x=1;auth.token={CREATOR}&auth_token={READER}",
    ],
)
async def test_a_second_credential_behind_a_semicolon_in_the_query_is_a_conflict(gateway, upstream, query):
    response = await gateway.get(f"/v1/leads/search?{query}")

    assert response.status == 400
    assert await response.json() == CONFLICT
    assert upstream.received == []


async def test_the_same_credential_behind_a_semicolon_is_stripped_and_other_semicolons_stay(
    gateway, upstream
):
    response = await gateway.get(f"/v1/leads/search?q=a;b&x=1;auth_token={READER}&auth_token={READER}")

    assert response.status == 200
    assert upstream.last().query == "q=a;b&x=1"
    assert READER not in upstream.last().target


async def test_a_semicolon_credential_in_a_form_body_is_a_conflict(gateway, upstream):
    body = f"x=1;auth_token={CREATOR}&auth_token={READER}".encode()
    response = await gateway.post(
        "/v1/leads/search", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )

    assert response.status == 400
    assert upstream.received == []


# --- item 5: bodies under uncommon or missing content types --------------------------------------------------------

FORM_SMUGGLE = f"auth_token={CREATOR}".encode()
JSON_SMUGGLE = f'{{"auth_token": "{CREATOR}"}}'.encode()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, FORM_SMUGGLE),  # Rack: a POST without Content-Type is a form
        ("", FORM_SMUGGLE),
        ("application/x-url-encoded", FORM_SMUGGLE),
        ("text/json", JSON_SMUGGLE),  # ASP.NET Core
        ("text/x-json", JSON_SMUGGLE),  # Rails
        ("application/jsonrequest", JSON_SMUGGLE),  # Rails
        ("application/x-json", JSON_SMUGGLE),
        ("application/merge-patch+json", JSON_SMUGGLE),  # Spring: application/*+json
        ("text/vnd.api+json", JSON_SMUGGLE),
        (
            "multipart/mixed; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=auth_token\r\n\r\n"
            + CREATOR.encode()
            + b"\r\n--XyZ--\r\n",
        ),
        (
            "multipart/related; boundary=XyZ",
            b'--XyZ\r\nContent-Disposition: form-data; name="auth_token"\r\n\r\n'
            + CREATOR.encode()
            + b"\r\n--XyZ--\r\n",
        ),
    ],
)
async def test_a_body_under_any_type_a_framework_parses_is_read_for_the_credential(
    gateway, upstream, content_type, body
):
    headers = [("Content-Type", content_type)] if content_type is not None else []

    response = await send(gateway, "POST", f"/v1/leads/search?auth_token={READER}", headers, body)

    assert response.status == 400
    assert response.json() == CONFLICT
    assert upstream.received == []


async def test_the_decided_credential_in_such_a_body_is_stripped(gateway, upstream):
    body = f"list_id=5&auth_token={READER}".encode()

    response = await send(gateway, "POST", "/v1/leads/search", [], body)

    assert response.status == 200
    assert upstream.last().body == b"list_id=5"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded; charset=utf-16le", FORM_SMUGGLE.decode().encode("utf-16le")),
        ("application/x-www-form-urlencoded; charset=iso-2022-jp", FORM_SMUGGLE),
        ("application/json; charset=utf-16", JSON_SMUGGLE.decode().encode("utf-16")),
        ("application/json; charset=utf-32be", JSON_SMUGGLE.decode().encode("utf-32-be")),
    ],
)
async def test_a_read_body_in_another_charset_is_400(gateway, upstream, content_type, body):
    response = await send(
        gateway, "POST", f"/v1/leads/search?auth_token={READER}", [("Content-Type", content_type)], body
    )

    assert response.status == 400
    assert response.json() == MALFORMED
    assert upstream.received == []


async def test_a_utf8_charset_is_fine(gateway, upstream):
    response = await send(
        gateway,
        "POST",
        "/v1/leads/search",
        [("Content-Type", "application/json; charset=UTF-8")],
        f'{{"auth_token": "{READER}", "n": 1}}'.encode(),
    )

    assert response.status == 200
    assert upstream.last().body == b'{"n": 1}'


@pytest.mark.parametrize(
    "key",
    [
        "auth_to\u212aen",  # KELVIN SIGN: lower() and casefold() give "k"
        "\uff41uth_token",  # FULLWIDTH LATIN SMALL LETTER A: NFKC gives "a"
        "auth_toke\u2099",  # SUBSCRIPT N: NFKC gives "n"
        "AUTH_TO\u212aEN",
        "auth\uff3ftoken",  # FULLWIDTH LOW LINE
    ],
)
async def test_json_keys_that_fold_to_the_credential_name_are_credentials(gateway, upstream, key):
    body = f'{{"{key}": "{CREATOR}"}}'.encode()

    response = await send(
        gateway, "POST", f"/v1/leads/search?auth_token={READER}", [("Content-Type", "application/json")], body
    )

    assert response.status == 400
    assert response.json() == CONFLICT
    assert upstream.received == []


@pytest.mark.parametrize("key", ["auth_to%E2%84%AAen", "%EF%BD%81uth_token"])
async def test_form_and_query_names_that_fold_to_the_credential_name_are_credentials(gateway, upstream, key):
    response = await gateway.get(f"/v1/leads/search?{key}={CREATOR}&auth_token={READER}")
    assert response.status == 400
    response = await send(
        gateway,
        "POST",
        f"/v1/leads/search?auth_token={READER}",
        [("Content-Type", "application/x-www-form-urlencoded")],
        f"{key}={CREATOR}".encode(),
    )
    assert response.status == 400
    assert upstream.received == []


async def test_ordinary_non_ascii_json_is_forwarded_untouched(gateway, upstream):
    body = '{"name": "Café Tōkyō", "notes": "\u017fome \u017ftrange", "k": "\u212a"}'.encode()

    response = await send(
        gateway, "POST", f"/v1/leads/search?auth_token={READER}", [("Content-Type", "application/json")], body
    )

    assert response.status == 200
    assert upstream.last().body == body


async def test_binary_uploads_still_stream_unread(gateway, upstream):
    body = b"\x00\xff" * 1000 + b"auth_token=" + CREATOR.encode()

    response = await send(
        gateway,
        "POST",
        f"/v1/leads/search?auth_token={READER}",
        [("Content-Type", "application/octet-stream")],
        body,
    )

    assert response.status == 200
    assert upstream.last().body == body


# --- item 7: one Content-Encoding, or 400 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encodings",
    [
        [("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")],
        [("Content-Encoding", "gzip"), ("Content-Encoding", "identity")],
        [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
        [("Content-Encoding", "gzip, gzip")],
        [("Content-Encoding", "gzip, br")],
    ],
)
async def test_layered_or_repeated_content_encodings_are_400(gateway, upstream, encodings):
    body = gzip.compress(f"auth_token={CREATOR}".encode())

    response = await send(
        gateway,
        "POST",
        f"/v1/leads/search?auth_token={READER}",
        [("Content-Type", "application/x-www-form-urlencoded"), *encodings],
        body,
    )

    assert response.status == 400
    assert response.json() == MALFORMED
    assert upstream.received == []


async def test_one_gzip_encoding_is_still_decoded(gateway, upstream):
    body = gzip.compress(f"list_id=5&auth_token={READER}".encode())

    response = await send(
        gateway,
        "POST",
        "/v1/leads/search",
        [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Encoding", "gzip")],
        body,
    )

    assert response.status == 200
    assert upstream.last().body == b"list_id=5"


# --- own review: cookies named like the credential (PHP's $_REQUEST, ASP.NET's Request[name]) ----------------------


@pytest.mark.parametrize(
    "cookie",
    [
        f"auth_token={CREATOR}",
        f"session=1; auth_token={CREATOR}",
        f"session=1;AUTH_TOKEN={CREATOR}",
        f"auth.token={CREATOR}",
        f"auth%5Ftoken={CREATOR}",
        f"a=1, auth_token={CREATOR}",
        f"auth_token={READER}",  # even the decided value: forward = false means the upstream never sees it
    ],
)
async def test_a_cookie_named_like_the_credential_is_400(gateway, upstream, cookie):
    response = await send(gateway, "GET", f"/v1/leads/search?auth_token={READER}", [("Cookie", cookie)])

    assert response.status == 400
    assert response.json() == MALFORMED
    assert upstream.received == []
    [record] = await wait_until(gateway.log_lines)
    assert record["outcome"] == "malformed"
    assert CREATOR not in str(record)


async def test_other_cookies_pass(gateway, upstream):
    cookie = "session=abc; auth_token_hint=1; theme=dark"

    response = await send(gateway, "GET", f"/v1/leads/search?auth_token={READER}", [("Cookie", cookie)])

    assert response.status == 200
    assert upstream.last().header("Cookie") == cookie
