"""The header policy as a table: given a client's headers, what the upstream receives (no server needed)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import header_text, upstream_headers
from gateway.vocabulary import TokenRecord

TOKEN = TokenRecord(
    id="tok_1",
    name="reader",
    type="developer",
    company=None,
    permissions=frozenset({"leads:read"}),
    not_before=None,
    expires=None,
    revoked_at=None,
    created_at=0.0,
)


def forwarded(
    headers: list[tuple[str, str]],
    *,
    token: TokenRecord = TOKEN,
    peer_trusted: bool = False,
    strip_authorization: bool = False,
    decoded: bool = False,
) -> list[tuple[str, str]]:
    return upstream_headers(
        CIMultiDictProxy(CIMultiDict(headers)),
        token,
        request_id="rid",
        peer="10.0.0.9",
        secure=False,
        peer_trusted=peer_trusted,
        strip_authorization=strip_authorization,
        decoded=decoded,
    )


def names(out: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in out]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        # hop-by-hop, and what the Connection headers name (all of them)
        ([("Connection", "X-A"), ("Connection", "X-B"), ("X-A", "1"), ("X-B", "2"), ("X-C", "3")], ["x-c"]),
        ([("Keep-Alive", "5"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Accept", "*/*")], ["accept"]),
        # identity and forwarding headers are the gateway's
        (
            [
                ("X-Gateway-Token-Name", "admin"),
                ("X-Request-Id", "mine"),
                ("Forwarded", "for=1"),
                ("X-Real-IP", "1"),
            ],
            [],
        ),
        # any name with an underscore (CGI/WSGI/PHP read it as the dashed name)
        ([("X_Gateway_Token_Name", "admin"), ("My_Header", "1"), ("My-Header", "2")], ["my-header"]),
        # method and path rewrites
        (
            [
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Original-URL", "/admin"),
                ("X-Rewrite-URL", "/admin"),
                ("X-Forwarded-Uri", "/admin"),
                ("X-Forwarded-Prefix", "/admin"),
                ("X-Forwarded-Path", "/admin"),
                ("X-Original-Method", "DELETE"),
                ("X-Forwarded-Method", "DELETE"),
                ("X-HTTP-Method", "DELETE"),
                ("X-Method-Override", "DELETE"),
                ("Expect", "100-continue"),
            ],
            [],
        ),
        # naming the gateway's own headers in Connection removes nothing of ours
        ([("Connection", "X-Gateway-Token-Id, X-Forwarded-For")], []),
    ],
)
def test_what_the_client_sent_and_what_is_kept(sent, kept):
    out = forwarded(sent)
    added = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
        "x-gateway-token-id",
        "x-gateway-token-name",
    ]
    assert names(out) == kept + added
    assert dict(out)["X-Gateway-Token-Name"] == "reader"


def test_the_bearer_header_goes_only_when_it_was_not_the_credential():
    sent = [("Authorization", "Bearer x")]
    assert "authorization" in names(forwarded(sent))
    assert "authorization" not in names(forwarded(sent, strip_authorization=True))


def test_a_decoded_body_loses_its_content_encoding():
    sent = [("Content-Encoding", "gzip")]
    assert "content-encoding" in names(forwarded(sent))
    assert "content-encoding" not in names(forwarded(sent, decoded=True))


def test_forwarding_headers_are_extended_only_for_a_trusted_proxy():
    sent = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"), ("Host", "api.example")]
    plain = dict(forwarded(sent))
    trusted = dict(forwarded(sent, peer_trusted=True))
    assert (plain["X-Forwarded-For"], plain["X-Forwarded-Proto"]) == ("10.0.0.9", "http")
    assert (trusted["X-Forwarded-For"], trusted["X-Forwarded-Proto"]) == ("1.2.3.4, 10.0.0.9", "https")
    assert plain["X-Forwarded-Host"] == "api.example"


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        ("reader", "reader"),
        ("100% ok", "100% ok"),
        ("東京-team", "%E6%9D%B1%E4%BA%AC-team"),
        ("Müller", "M%C3%BCller"),
        ("a\r\nX-Injected: 1", "a%0D%0AX-Injected: 1"),
    ],
)
def test_token_names_outside_printable_ascii_are_percent_encoded(name, sent):
    assert header_text(name) == sent


def test_client_bytes_outside_ascii_pass_as_the_bytes_they_were():
    # aiohttp hands header bytes over as UTF-8 with surrogate escapes; the upstream client writes latin-1.
    value = b"caf\xc3\xa9 \xff".decode("utf-8", "surrogateescape")
    out = dict(forwarded([("X-Note", value)]))
    assert out["X-Note"].encode("latin-1") == b"caf\xc3\xa9 \xff"
