"""The header policy: which request headers reach the upstream, and what the gateway adds. Pure, table-tested.

The upstream must act on exactly the request that was decided on: no header may forge the caller's identity, name
another method or path, or carry bytes that would break the header block.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote

from multidict import MultiMapping

from gateway.vocabulary import TokenRecord

# Never forwarded in either direction (RFC 9110 section 7.6.1), plus framing the gateway redoes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "http2-settings",
    }
)
# Request headers the gateway sets itself or refuses to pass on: a client must not be able to forge identity,
# make the upstream run another method or path than the one the permission was decided on (Symfony, Laravel,
# IIS URL Rewrite, Spring's ForwardedHeaderFilter and Traefik-style middlewares read these), or ask the upstream for
# an interim 100 on our behalf.
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "expect",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-forwarded-path",
}
RESPONSE_DROP = HOP_BY_HOP - {"content-length"}
IDENTITY_PREFIX = "x-gateway-"


def upstream_headers(
    raw: MultiMapping[str],
    token: TokenRecord,
    *,
    request_id: str,
    peer: str | None,
    secure: bool,
    peer_trusted: bool,
    strip_authorization: bool,
    decoded: bool,
) -> list[tuple[str, str]]:
    """The headers the upstream receives for an allowed request.

    `peer_trusted`: the client is one of `server.trusted_proxies`, so its X-Forwarded-* are extended, not replaced.
    `strip_authorization`: the Bearer header carried the credential. `decoded`: the body is forwarded decoded.
    """
    drop = REQUEST_DROP
    if "Connection" in raw:
        # Headers the client names in Connection (in any of its Connection headers) are hop-by-hop too; our own
        # identity headers are added afterwards, so naming them here cannot remove them.
        drop = drop | {h.strip().lower() for value in raw.getall("Connection") for h in value.split(",")}
    if strip_authorization:
        drop = drop | {"authorization"}
    if decoded:
        drop = drop | {"content-encoding"}
    # A name with `_` is dropped, as nginx does: CGI, WSGI and PHP file `X_Gateway_Token_Id` under the same key
    # as our `X-Gateway-Token-Id` (HTTP_X_GATEWAY_TOKEN_ID), and `X_Forwarded_For` under X-Forwarded-For's.
    out = [
        (name, value if value.isascii() else raw_value(value))
        for name, value in raw.items()
        if (low := name.lower()) not in drop and not low.startswith(IDENTITY_PREFIX) and "_" not in low
    ]
    forwarded_for = peer
    proto = "https" if secure else "http"
    host = raw.get("Host", "")
    if peer_trusted:
        prior = ", ".join(raw.getall("X-Forwarded-For", []))
        if prior:
            forwarded_for = f"{prior}, {peer}"
        proto = raw.get("X-Forwarded-Proto", proto)
        host = raw.get("X-Forwarded-Host", host)
    out.append(("X-Forwarded-For", forwarded_for or ""))
    out.append(("X-Forwarded-Proto", proto))
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Request-Id", request_id))
    out.append(("X-Gateway-Token-Id", header_text(token.id)))
    out.append(("X-Gateway-Token-Name", header_text(token.name)))
    if token.company:
        out.append(("X-Gateway-Company", header_text(token.company)))
    return out


_PRINTABLE = re.compile(r"[ -~]*")


def header_text(value: str) -> str:
    """A value of ours (a token's name or company) as a header: printable ASCII as it is, anything else
    percent-encoded UTF-8 (`東京-team` is `%E6%9D%B1%E4%BA%AC-team`), so no name can break the header block or
    reach the upstream as mojibake."""
    if _PRINTABLE.fullmatch(value):
        return value
    return quote(value, safe=_HEADER_SAFE)


# Printable ASCII that stays as it is inside a percent-encoded value; `%` itself is encoded, so decoding is exact.
_HEADER_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


def raw_value(value: str) -> str:
    """A client's header value with non-ASCII bytes, back to those bytes (as the latin-1 text the upstream
    client writes byte for byte): aiohttp decoded them as UTF-8 with surrogate escapes, and forwarding that text
    would change the bytes or fail on them."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def is_trusted(peer: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)
