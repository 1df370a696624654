"""Finding the caller's credential in query, body and Authorization header, and what the upstream gets instead."""

from __future__ import annotations

import email
import json
from email import policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import credentials
from gateway.credentials import CredentialSpec, Found, body_kind, find, redact_query
from gateway.errors import CredentialConflict, MalformedRequest

SPEC = CredentialSpec()
FORWARD = CredentialSpec(forward=True)
TOKEN = "gw_3fQpZ8v1Lk2mN9xR4tY7uW0sA5dE6hJ-cB_iOoPq"  # 43 characters, like the demo tokens

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MULTIPART = "multipart/form-data; boundary=XyZ"


def multipart(*parts: tuple[str, bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart body from (Content-Disposition parameters, content) pairs."""
    blocks = b"".join(
        b"--XyZ\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (d.encode(), c) for d, c in parts
    )
    return preamble + blocks + b"--XyZ--\r\n" + epilogue


# -- which bodies are read ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        (FORM, "form"),
        ("Application/X-WWW-Form-URLEncoded; charset=UTF-8", "form"),
        ("application/x-www-form-urlencoded,text/plain", "form"),  # PHP cuts the type at ','
        ("multipart/form-data; boundary=x", "multipart"),
        ("MULTIPART/FORM-DATA;boundary=x", "multipart"),
        (JSON, "json"),
        ("application/json; charset=utf-8", "json"),
        ("application/vnd.api+json", "json"),
        ("Application/Problem+JSON", "json"),
        ("text/plain", None),
        ("application/octet-stream", None),
        ("application/xml", None),
        ("image/png", None),
        ("application/jsonx", None),
        # every place a common framework reads parameters from (SECURITY.md): read, never streamed unread
        ("text/json", "json"),  # ASP.NET Core
        ("text/x-json", "json"),  # Rails
        ("application/jsonrequest", "json"),  # Rails
        ("application/x-json", "json"),
        ("text/vnd.custom+json", "json"),
        ("multipart/mixed; boundary=x", "multipart"),
        ("Multipart/Related; boundary=x", "multipart"),
        ("application/x-url-encoded", "form"),
        ("text/x-www-form-urlencoded", "form"),
        ("", "form"),  # Rack reads a POST without a Content-Type as a form
        (None, "form"),
    ],
)
def test_form_multipart_and_json_bodies_under_any_type_a_framework_parses_are_read(
    content_type: str | None, kind: str | None
) -> None:
    assert body_kind(SPEC, content_type) == kind


def test_no_body_is_read_when_the_body_field_is_disabled() -> None:
    assert body_kind(CredentialSpec(body_field=None), JSON) is None
    found = find(CredentialSpec(body_field=None), "", [], JSON, body := b'{"auth_token": "x"}')
    assert found == Found(None, "", body, False)


def test_a_configured_name_must_be_a_plain_word() -> None:
    with pytest.raises(ValueError, match=r"credentials\.query_param"):
        CredentialSpec(query_param="auth token")
    CredentialSpec(query_param="api-key", body_field=None)


# -- the query ---------------------------------------------------------------------------------------------------


def test_a_typical_query_token_is_found_and_stripped() -> None:
    found = find(SPEC, f"auth_token={TOKEN}&list_id=5", [], None, None)
    assert found == Found(TOKEN, "list_id=5", None, False)


def test_a_query_without_the_name_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parse(*_: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(credentials, "_scan_form", no_parse)
    query = "list_id=5&phone_number=5551234&first_name=Ann"
    assert find(SPEC, query, [f"Bearer {TOKEN}"], None, None) == Found(TOKEN, query, None, True)


@pytest.mark.parametrize(
    "name",
    [
        "auth_token",
        "AUTH_TOKEN",
        "Auth_Token",
        "auth_token[]",
        "Auth_Token[]",
        "auth%5Ftoken",
        "auth%5ftoken",
        "%61uth_token",
        "auth_token%5B%5D",
        # what PHP also files under $_REQUEST['auth_token']
        "auth.token",
        "auth+token",
        "auth%20token",
        "+auth_token",
        "auth[token",
        "auth_token[x]",
        "auth_token[][y]",
        "auth_token%00junk",
    ],
)
def test_every_spelling_the_upstream_reads_is_a_credential(name: str) -> None:
    found = find(SPEC, f"a=1&{name}=secret&b=2", [], None, None)
    assert (found.token, found.query) == ("secret", "a=1&b=2")
    assert redact_query(SPEC, f"a=1&{name}=secret&b=2") == "a=1&b=2"


@pytest.mark.parametrize(
    "name",
    ["auth_tokens", "xauth_token", "auth_token]", "auth[token]", "authtoken", "auth-token", "auth_token_"],
)
def test_other_names_are_not_credentials(name: str) -> None:
    query = f"{name}=secret&b=2"
    assert find(SPEC, query, [], None, None) == Found(None, query, None, False)


@pytest.mark.parametrize(
    ("query", "token", "forwarded"),
    [
        ("auth_token=abc", "abc", ""),
        ("a=%zz&auth_token=abc&b=1+2&c", "abc", "a=%zz&b=1+2&c"),
        ("a=1&&auth_token=abc&&b=2&", "abc", "a=1&b=2"),
        ("auth_token=abc&AUTH_TOKEN=abc&auth_token[]=abc", "abc", ""),
        ("auth_token=a%2Bb+c%41", "a+b cA", ""),
        ("auth_token=%zz%4", "%zz%4", ""),  # invalid escapes stay as they are, like PHP
        ("auth_token=%C3%A9", "\u00e9", ""),
        ("auth_token", "", ""),  # a name without '=' is an empty value
        ("auth_token=", "", ""),
        ("auth_token=&AUTH_TOKEN=", "", ""),
        ("auth_token=a=b", "a=b", ""),
        ("x=auth_token", None, "x=auth_token"),
    ],
)
def test_query_credentials_are_decoded_like_forms(query: str, token: str | None, forwarded: str) -> None:
    assert find(SPEC, query, [], None, None) == Found(token, forwarded, None, False)


@pytest.mark.parametrize(
    "query",
    [
        "auth_token=a&auth_token=b",
        "auth_token=a&AUTH_TOKEN[]=b",
        "auth_token=&auth_token=a",
        "auth_token=a&auth_token=",
        "auth_token=a+b&auth_token=a%20c",
    ],
)
def test_different_values_in_the_query_conflict(query: str) -> None:
    with pytest.raises(CredentialConflict):
        find(SPEC, query, [], None, None)
    with pytest.raises(CredentialConflict):
        find(FORWARD, query, [], None, None)


def test_a_credential_value_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        find(SPEC, "auth_token=%FF", [], None, None)


def test_forwarding_keeps_the_query_but_still_finds_the_token() -> None:
    query = f"auth_token={TOKEN}&list_id=5"
    found = find(FORWARD, query, [f"Bearer {TOKEN}"], None, None)
    assert found == Found(TOKEN, query, None, False)
    assert found.query is query


def test_a_disabled_query_param_is_left_alone() -> None:
    spec = CredentialSpec(query_param=None)
    assert find(spec, "auth_token=x", ["Bearer y"], None, None) == Found("y", "auth_token=x", None, True)


# -- the Authorization header ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer {TOKEN}", TOKEN),
        (f"BEARER    {TOKEN}", TOKEN),
        (f"Bearer\t{TOKEN}", TOKEN),
        (f"Bearer {TOKEN}  ", TOKEN),
        ("Bearer", ""),
        ("Bearer ", ""),
    ],
)
def test_a_bearer_header_is_a_credential_and_is_stripped(header: str, token: str) -> None:
    assert find(SPEC, "", [header], None, None) == Found(token, "", None, True)
    assert find(FORWARD, "", [header], None, None) == Found(token, "", None, False)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", "Bearerabc", "", "Digest username=x"])
def test_other_authorization_schemes_are_not_credentials(header: str) -> None:
    assert find(SPEC, "", [header], None, None) == Found(None, "", None, False)


def test_two_authorization_headers_are_malformed() -> None:
    with pytest.raises(MalformedRequest):
        find(SPEC, "", ["Bearer a", "Bearer a"], None, None)
    with pytest.raises(MalformedRequest):
        find(SPEC, "", ["Basic a", "Bearer a"], None, None)


def test_a_disabled_bearer_ignores_the_header_entirely() -> None:
    spec = CredentialSpec(bearer=False)
    assert find(spec, "auth_token=a", ["Bearer b", "Bearer c"], None, None) == Found("a", "", None, False)


@pytest.mark.parametrize(
    ("query", "header", "content_type", "body"),
    [
        ("auth_token=a", "Bearer b", None, None),
        ("", "Bearer a", JSON, b'{"auth_token": "b"}'),
        ("auth_token=a", None, FORM, b"auth_token=b"),
        ("auth_token=", "Bearer b", None, None),
        ("", "Bearer ", FORM, b"auth_token=b"),
    ],
)
def test_different_values_in_different_places_conflict(
    query: str, header: str | None, content_type: str | None, body: bytes | None
) -> None:
    with pytest.raises(CredentialConflict):
        find(SPEC, query, [header] if header else [], content_type, body)


def test_the_same_value_everywhere_is_one_credential() -> None:
    body = multipart(('name="auth_token"', TOKEN.encode()), ('name="list_id"', b"5"))
    found = find(SPEC, f"AUTH_TOKEN={TOKEN}", [f"Bearer {TOKEN}"], MULTIPART, body)
    assert found == Found(TOKEN, "", multipart(('name="list_id"', b"5")), True)


# -- form-urlencoded bodies ---------------------------------------------------------------------------------------


def test_a_form_body_loses_only_its_credential_pairs() -> None:
    body = b"first=%C3%A9+x&auth_token=abc&raw=\xe9\xff&AUTH%5FTOKEN=abc&last=%zz"
    found = find(SPEC, "", [], FORM, body)
    assert found == Found("abc", "", b"first=%C3%A9+x&raw=\xe9\xff&last=%zz", False)


def test_an_untouched_body_is_the_same_object() -> None:
    for content_type, body in [
        (FORM, b"list_id=5&phone=5551234"),
        (JSON, b'{"list_id": 5}'),
        (MULTIPART, multipart(('name="list_id"', b"5"))),
        ("text/plain", b"auth_token=x"),
        (FORM, b"auth_token=x"),
    ]:
        spec = FORWARD if body == b"auth_token=x" else SPEC
        assert find(spec, "", [], content_type, body).body is body


def test_a_form_credential_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        find(SPEC, "", [], FORM, b"auth_token=\xff")


def test_an_unread_body_kind_is_never_parsed() -> None:
    body = b'{"auth_token": 5'
    assert find(SPEC, "", [], "text/plain", body) == Found(None, "", body, False)


# -- JSON bodies --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "forwarded"),
    [
        (b'{"auth_token": "T"}', b"{}"),
        (b'{ "auth_token" : "T" }', b"{  }"),
        (b'{"auth_token":"T","a":1}', b'{"a":1}'),
        (b'{"a":1,"auth_token":"T"}', b'{"a":1}'),
        (b'{"a":1, "auth_token":"T" ,"b":2}', b'{"a":1, "b":2}'),
        (b'{"auth_token":"T","AUTH_TOKEN":"T","a":1}', b'{"a":1}'),
        (b'{"a":1,"auth_token":"T","b":2,"Auth_Token[]":"T"}', b'{"a":1,"b":2}'),
        (b'\n{\n  "a": 1,\n  "auth_token": "T"\n}\n', b'\n{\n  "a": 1\n}\n'),
        # numbers that re-serialisation would change
        (
            b'{"big": 12345678901234567890123, "auth_token": "T", "f": 0.1000000000000000000001, "e": 1E400}',
            b'{"big": 12345678901234567890123, "f": 0.1000000000000000000001, "e": 1E400}',
        ),
        ('{"n": "caf\u00e9 \\u00e9", "auth_token": "T"}'.encode(), '{"n": "caf\u00e9 \\u00e9"}'.encode()),
        (b'{"auth\\u005ftoken": "T", "x": "\\ud83d\\ude00"}', b'{"x": "\\ud83d\\ude00"}'),
        (b'{"auth_token": "\\u0054"}', b"{}"),
        # nested credentials are left alone
        (
            b'{"auth_token":"T","o":{"auth_token":5},"l":[{"auth_token":"x"}]}',
            b'{"o":{"auth_token":5},"l":[{"auth_token":"x"}]}',
        ),
    ],
)
def test_json_credential_members_are_cut_out_of_the_text(body: bytes, forwarded: bytes) -> None:
    found = find(SPEC, "", [], JSON, body)
    assert (found.token, found.body) == ("T", forwarded)
    json.loads(forwarded)


@pytest.mark.parametrize(
    "body",
    [b'["auth_token", {"auth_token": "x"}]', b'"auth_token"', b"5", b"null", b'{"o": {"auth_token": "x"}}'],
)
def test_json_without_a_top_level_credential_member_has_no_credential(body: bytes) -> None:
    assert find(SPEC, "", [], JSON, body) == Found(None, "", body, False)


@pytest.mark.parametrize(
    "body",
    [
        b'{"auth_token": 5}',
        b'{"auth_token": null}',
        b'{"auth_token": true}',
        b'{"auth_token": ["x"]}',
        b'{"auth_token": {"v": "x"}}',
        b'{"auth_token": "x"',
        b'{"auth_token": "x",}',
        b'{"auth_token": "x"} {}',
        b'{"auth_token" "x"}',
        b"{'auth_token': 'x'}",
        b'{"auth_token": "x", "n": NaN}',
        b'{"auth_token": "\\ud800"}',
        b'{"auth_token": "tab\there"}',
        b'\xef\xbb\xbf{"auth_token": "x"}',
        b'{"auth_token": "\xff"}',
        '{"auth_token": "x"}'.encode("utf-16"),
        b'{"auth_token": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_an_unreadable_json_body_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        find(SPEC, "", [], JSON, body)


def test_duplicate_json_keys_are_all_collected() -> None:
    assert find(SPEC, "", [], JSON, b'{"auth_token": "a", "auth_token": "a"}').body == b"{}"
    with pytest.raises(CredentialConflict):
        find(SPEC, "", [], JSON, b'{"auth_token": "a", "AUTH_TOKEN": "b"}')


def test_invalid_json_that_cannot_hold_the_credential_is_streamed_unread() -> None:
    body = b'{"list_id": 5,'
    assert find(SPEC, "", [], JSON, body).body is body


# -- multipart bodies ---------------------------------------------------------------------------------------------


def test_multipart_credential_parts_are_removed_byte_exactly() -> None:
    keep_a = ('name="list_id"', b"5")
    keep_b = (
        'name="file"; filename="a.bin"\r\nContent-Type: application/octet-stream',
        b"\x00\xff\r\n -XyZ\r\nx--XyZ--",
    )
    secret = ('name="auth_token"', TOKEN.encode())
    body = multipart(secret, keep_a, secret, keep_b, secret, preamble=b"ignored\r\n", epilogue=b"\r\ntrailer")
    found = find(SPEC, "", [], MULTIPART, body)
    assert found.token == TOKEN
    assert found.body == multipart(keep_a, keep_b, preamble=b"ignored\r\n", epilogue=b"\r\ntrailer")


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=XyZ",
        'multipart/form-data; boundary="XyZ"',
        "multipart/form-data;boundary=XyZ; charset=utf-8",
        "Multipart/Form-Data; charset=utf-8; boundary = XyZ",
    ],
)
def test_the_boundary_may_be_quoted_or_not(content_type: str) -> None:
    body = multipart(('name="auth_token"', b"T"), ('name="a"', b"1"))
    assert find(SPEC, "", [], content_type, body) == Found("T", "", multipart(('name="a"', b"1")), False)


@pytest.mark.parametrize(
    "disposition",
    [
        'name="auth_token"',
        'name="AUTH_TOKEN[]"',
        "name=auth_token",
        'name="auth.token"',
        "name='auth_token'",  # PHP strips single quotes
        'name="auth\\_token"',  # a quoted-pair, unescaped by RFC parsers
        'filename="t.txt"; name="auth_token"',
        'NAME="auth_token"',
    ],
)
def test_every_spelling_of_a_part_name_is_a_credential(disposition: str) -> None:
    body = multipart((disposition, b"T"), ('name="a"', b"1"))
    assert find(SPEC, "", [], MULTIPART, body) == Found("T", "", multipart(('name="a"', b"1")), False)


def test_a_disposition_without_a_type_still_names_the_part() -> None:
    body = b'--XyZ\r\nContent-Disposition: name="auth_token"\r\n\r\nT\r\n--XyZ--\r\n'
    assert find(SPEC, "", [], MULTIPART, body) == Found("T", "", b"--XyZ--\r\n", False)


def test_multipart_with_bare_line_feeds_is_read_like_php() -> None:
    body = b'--XyZ\nContent-Disposition: form-data; name="auth_token"\n\nT\n--XyZ\nContent-Disposition: form-data; name="a"\n\n1\n--XyZ--\n'
    found = find(SPEC, "", [], MULTIPART, body)
    assert found == Found("T", "", b'--XyZ\nContent-Disposition: form-data; name="a"\n\n1\n--XyZ--\n', False)


def test_folded_part_headers_are_unfolded() -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data;\r\n name="auth_token"\r\n\r\nT\r\n--XyZ--\r\n'
    assert find(SPEC, "", [], MULTIPART, body).token == "T"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", multipart(('name="a"', b"1"))),
        ("multipart/form-data; boundary=", multipart(('name="a"', b"1"))),
        ("multipart/form-data; boundary=XyZ; boundary=XyZ", multipart(('name="a"', b"1"))),
        ("multipart/form-data; x=boundary; boundary=XyZ", multipart(('name="a"', b"1"))),
        ("multipart/form-data; boundary=XyZ,a", multipart(('name="a"', b"1"))),
        ('multipart/form-data; boundary="Xy\\Z"', multipart(('name="a"', b"1"))),
        ('multipart/form-data; boundary="XyZ', multipart(('name="a"', b"1"))),
        (MULTIPART, b"no delimiter at all"),
        (MULTIPART, b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'),  # no close delimiter
        (MULTIPART, b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1'),
        (MULTIPART, multipart(('name="a"', b"1\r\n--XyZjunk"))),  # PHP would take that line for a delimiter
        (MULTIPART, multipart(('name="a"', b"1"), epilogue=b"\r\n--XyZ\r\n")),
        (MULTIPART, multipart(('name="a"; name="auth_token"', b"1"))),
        (MULTIPART, multipart(("name*=utf-8''auth_token", b"1"))),
        (MULTIPART, multipart(('name*0="auth_"; name*1="token"', b"1"))),
        (MULTIPART, multipart(('name="a"\r\nbad header line', b"1"))),
        (MULTIPART, multipart(('name="a"\r\nContent-Disposition: form-data; name="b"', b"1"))),
        (MULTIPART, multipart(('name="a', b"1"))),
        (MULTIPART, multipart(('name="a" junk', b"1"))),
        (MULTIPART, b"--XyZ\r\n Content-Disposition: form-data\r\n\r\n1\r\n--XyZ--\r\n"),
        (MULTIPART, b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n--XyZ--\r\n'),
        (MULTIPART, multipart(('name="auth_token"', b"\xff"))),
        (MULTIPART, multipart(('name="auth_token"\r\nContent-Transfer-Encoding: base64', b"VA=="))),
    ],
)
def test_an_unreadable_multipart_body_is_malformed(content_type: str, body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        find(SPEC, "", [], content_type, body)


def test_other_parts_may_hold_any_bytes() -> None:
    body = multipart(('name="a"; filename="x"', bytes(range(256))), ('name="auth_token"', b"T"))
    assert find(SPEC, "", [], MULTIPART, body) == Found(
        "T", "", multipart(('name="a"; filename="x"', bytes(range(256)))), False
    )


def _body_of(content_type: str, entries: int) -> bytes:
    """A body holding the credential and filler entries, entries in all."""
    if content_type == FORM:
        return b"a=1&" * (entries - 1) + b"auth_token=x"
    if content_type == JSON:
        return b'{"auth_token":"x"' + b',"a":1' * (entries - 1) + b"}"
    return multipart(('name="auth_token"', b"x"), *[('name="a"', b"1")] * (entries - 1))


@pytest.mark.parametrize("content_type", [FORM, JSON, MULTIPART])
def test_a_body_with_too_many_entries_is_malformed(content_type: str) -> None:
    assert find(SPEC, "", [], content_type, _body_of(content_type, credentials.MAX_ENTRIES)).token == "x"
    with pytest.raises(MalformedRequest):
        find(SPEC, "", [], content_type, _body_of(content_type, credentials.MAX_ENTRIES + 1))


# -- properties ---------------------------------------------------------------------------------------------------

_TOKENS = ["", "abc", "xyz"]
_SAFE_VALUE = st.text(
    st.characters(codec="ascii", categories=["L", "N", "P", "S"], exclude_characters="&#"), max_size=8
)
# Other names cannot spell the credential: no 't' at all.
_OTHER_NAME = st.text("abcdefghijklm0123456789-_", min_size=1, max_size=8)


@st.composite
def _credential_name(draw: st.DrawFn, *, encode: bool) -> str:
    """A random spelling of auth_token that PHP files under $_REQUEST['auth_token']."""
    name = ""
    for c in "auth_token":
        if c == "_":
            name += draw(st.sampled_from(["_", ".", "+", "%5F", "%2E", "%20"] if encode else "_. "))
        else:
            c = c.upper() if draw(st.booleans()) else c
            name += f"%{ord(c):02X}" if encode and draw(st.booleans()) else c
    if draw(st.booleans()):
        name += draw(st.sampled_from(["[]", "[x]", "%5B%5D"] if encode else ["[]", "[x]"]))
    return name


def _encoded(value: str, draw: st.DrawFn) -> str:
    """A form encoding of value; several spellings decode to it."""
    return "".join(f"%{ord(c):02x}" if draw(st.booleans()) else c for c in value)


@st.composite
def _form_entries(draw: st.DrawFn) -> list[tuple[bool, str, str]]:
    """(is credential, the entry as written, the credential value) in order."""
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            value = draw(st.sampled_from(_TOKENS))
            entries.append((True, f"{draw(_credential_name(encode=True))}={_encoded(value, draw)}", value))
        else:
            name = draw(_OTHER_NAME)
            entries.append((False, name + draw(st.sampled_from(["", "=", "=="])) + draw(_SAFE_VALUE), ""))
    return entries


def _expected_token(values: list[str]) -> str | type[CredentialConflict] | None:
    if len(set(values)) > 1:
        return CredentialConflict
    return values[0] if values else None


@settings(max_examples=400, deadline=None)
@given(_form_entries(), st.sampled_from(["query", "form"]), st.booleans())
def test_stripped_forms_keep_everything_else(
    entries: list[tuple[bool, str, str]], place: str, bearer: bool
) -> None:
    text = "&".join(written for _, written, _ in entries)
    values = [value for is_credential, _, value in entries if is_credential]
    headers = [f"Bearer {values[0]}"] if bearer and values else []
    query, content_type, body = (text, None, None) if place == "query" else ("", FORM, text.encode())
    expected = _expected_token(values)
    if expected is CredentialConflict:
        with pytest.raises(CredentialConflict):
            find(SPEC, query, headers, content_type, body)
        return
    found = find(SPEC, query, headers, content_type, body)
    assert found.token == expected
    others = [written for is_credential, written, _ in entries if not is_credential]
    forwarded = found.query if place == "query" else found.body.decode()  # type: ignore[union-attr]
    if values:
        assert (forwarded.split("&") if forwarded else []) == others
    else:
        assert forwarded == text
    again = find(SPEC, found.query, [], content_type, found.body)
    assert again.token is None


_JSON_VALUES = st.sampled_from(
    [
        "1",
        "-0.5e-7",
        "12345678901234567890123",
        "0.1000000000000000000001",
        "true",
        "null",
        '"caf\u00e9"',
        '"\\u00e9\\n"',
    ]
) | st.sampled_from(['{"auth_token": 5}', '[{"auth_token": "x"}]', "[]", "{}"])
_JSON_SPACE = st.sampled_from(["", " ", "\n  ", "\t"])


@st.composite
def _json_members(draw: st.DrawFn) -> list[tuple[bool, str, str]]:
    members = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            value = draw(st.sampled_from(_TOKENS))
            name = draw(_credential_name(encode=False))
            if draw(st.booleans()):
                name = "".join(f"\\u{ord(c):04x}" if draw(st.booleans()) else c for c in name)
            members.append((True, f'"{name}"{draw(_JSON_SPACE)}:{draw(_JSON_SPACE)}"{value}"', value))
        else:
            name = draw(_OTHER_NAME)
            members.append((False, f'"{name}":{draw(_JSON_SPACE)}{draw(_JSON_VALUES)}', ""))
    return members


@settings(max_examples=400, deadline=None)
@given(_json_members(), _JSON_SPACE, _JSON_SPACE)
def test_stripped_json_keeps_everything_else(
    members: list[tuple[bool, str, str]], before: str, after: str
) -> None:
    separators = [",", " , ", ",\n  "]
    text = (
        before
        + "{"
        + "".join((separators[i % 3] if i else after) + written for i, (_, written, _) in enumerate(members))
        + after
        + "}"
        + before
    )
    body = text.encode()
    values = [value for is_credential, _, value in members if is_credential]
    expected = _expected_token(values)
    if expected is CredentialConflict:
        with pytest.raises(CredentialConflict):
            find(SPEC, "", [], JSON, body)
        return
    found = find(SPEC, "", [], JSON, body)
    assert found.token == expected
    assert found.body is not None
    others = [written for is_credential, written, _ in members if not is_credential]
    assert json.loads(found.body, object_pairs_hook=list) == json.loads(
        "{" + ",".join(others) + "}", object_pairs_hook=list
    )
    position = 0
    for written in others:  # byte for byte, in order
        position = found.body.decode().index(written, position) + len(written)
    if not values:
        assert found.body is body
    assert find(SPEC, "", [], JSON, found.body).token is None


_PART_CONTENT = st.binary(max_size=12).map(lambda b: b.replace(b"-", b"_"))


@st.composite
def _parts(draw: st.DrawFn) -> list[tuple[bool, str, bytes]]:
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            value = draw(st.sampled_from(_TOKENS))
            name = draw(_credential_name(encode=False))
            quote = draw(st.sampled_from(['"', ""])) if "[" not in name and " " not in name else '"'
            parts.append((True, f"name={quote}{name}{quote}", value.encode()))
        else:
            filename = draw(st.sampled_from(["", '; filename="auth_token.txt"', "; filename=x.bin"]))
            parts.append((False, f'name="{draw(_OTHER_NAME)}"{filename}', draw(_PART_CONTENT)))
    return parts


@settings(max_examples=300, deadline=None)
@given(_parts(), st.sampled_from([b"", b"preamble\r\n"]), st.sampled_from([b"", b"\r\nepilogue"]))
def test_stripped_multipart_keeps_everything_else(
    parts: list[tuple[bool, str, bytes]], preamble: bytes, epilogue: bytes
) -> None:
    body = multipart(*((d, c) for _, d, c in parts), preamble=preamble, epilogue=epilogue)
    values = [content.decode() for is_credential, _, content in parts if is_credential]
    expected = _expected_token(values)
    if expected is CredentialConflict:
        with pytest.raises(CredentialConflict):
            find(SPEC, "", [], MULTIPART, body)
        return
    found = find(SPEC, "", [], MULTIPART, body)
    assert found.token == expected
    others = [(d, c) for is_credential, d, c in parts if not is_credential]
    assert found.body == multipart(*others, preamble=preamble, epilogue=epilogue)
    assert find(SPEC, "", [], MULTIPART, found.body).token is None
    # An independent parser reads the same fields from what the upstream receives.
    message = email.message_from_bytes(
        b"Content-Type: " + MULTIPART.encode() + b"\r\n\r\n" + found.body, policy=policy.HTTP
    )
    if others:
        assert [p.get_payload(decode=True) for p in message.iter_parts()] == [c for _, c in others]
