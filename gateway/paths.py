"""Request-target normalisation: the one canonical path that routes are matched on and the upstream receives.

Anything a server behind us could read differently from us (encoded slashes, double encoding, path parameters,
fragments, escapes that are not UTF-8) is refused rather than guessed at.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

from gateway.errors import MalformedRequest

# The common case, validated in one pass: segments of plain pchars (no `%`, no `;`), none of them `.` or `..`,
# single slashes, and a query of visible ASCII without `#`. Possessive quantifiers keep a near miss linear.
_SEGMENT = r"(?!\.\.?(?:[/?]|\Z))[A-Za-z0-9\-._~!$&'()*+,=:@]++"
_PLAIN = re.compile(rf"(/(?:{_SEGMENT}(?:/{_SEGMENT})*+/?)?)(?:\?([!\"$-~]*+))?")

# Outside visible ASCII, or a fragment, anywhere in the target. A fragment is never sent by a conforming client,
# and aiohttp's two parsers disagree on whether `#` ends the path.
_BAD_CHAR = re.compile(r"[^!-~]|#")
# http(s) absolute-form, as sent to proxies. Userinfo is refused: nobody legitimate sends it to a gateway.
_ABSOLUTE = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]+(?=[/?]|\Z)")
# `\` is a separator to some servers, `;` starts path parameters to others (`/..;/`).
_BAD_PATH_CHAR = re.compile(r"[\\;]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Double encoding: whoever decodes twice would see a different path from the one we matched.
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Encoded `/` and `\` are separators to some servers; encoded `?`, `#` and `;` end the path for an upstream that
# decodes the target before splitting it (a PHP front controller doing `urldecode($_SERVER['REQUEST_URI'])`), which
# would then read another path and a query the gateway never saw.
_FORBIDDEN_ESCAPES = frozenset([*range(0x20), 0x23, 0x2F, 0x3B, 0x3F, 0x5C, 0x7F])
# Printable ASCII that is not allowed unencoded in a URI path but that aiohttp lets through: encoding it gives
# one spelling per path, so `/a|b` and `/a%7Cb` match the same route.
_ENCODE_LITERALS = str.maketrans({c: f"%{ord(c):02X}" for c in '"<>[]^`{|}'})


def normalise(target: str) -> tuple[str, str]:
    """Split a raw request-target into (canonical path, raw query); raise MalformedRequest if it is unsafe."""
    plain = _PLAIN.fullmatch(target)
    if plain is not None:
        return plain[1], plain[2] or ""
    return _normalise_slowly(target)


def _normalise_slowly(target: str) -> tuple[str, str]:
    if _BAD_CHAR.search(target):
        raise MalformedRequest("control, non-ASCII or fragment in request-target")
    if not target.startswith("/"):
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise MalformedRequest("request-target is neither origin-form nor http(s) absolute-form")
        # The authority is the Host header's business; an empty path means "/".
        target = "/" + target[absolute.end() :].removeprefix("/")
    path, _, query = target.partition("?")
    if _BAD_PATH_CHAR.search(path):
        raise MalformedRequest("backslash or semicolon in path")
    if "%" in path:
        path = _canonical_escapes(path)
    path = path.translate(_ENCODE_LITERALS)
    return _remove_dot_segments(path), query


def _canonical_escapes(path: str) -> str:
    if _LONE_PERCENT.search(path):
        raise MalformedRequest("'%' not followed by two hex digits")
    try:
        # Strict: overlong forms (%C0%AE), surrogates and stray continuation bytes are refused.
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest("path escapes are not UTF-8") from exc
    if not decoded.isascii() and _nfkc_adds_syntax(decoded):
        raise MalformedRequest("path characters that NFKC turns into '/', '.', '\\', '%' or a delimiter")
    path = _ESCAPE.sub(_canonical_escape, path)
    # Checked after decoding so that `%25%32%65` cannot assemble a double encoding either.
    if _DOUBLE_ENCODED.search(path):
        raise MalformedRequest("double-encoded path")
    return path


# What an upstream applying NFKC (Python's and Java's IDNA-style path handling, some .NET and PHP normalisers)
# must not find more of than we matched on: U+FF0E FULLWIDTH FULL STOP, U+2024 ONE DOT LEADER, U+FF0F FULLWIDTH
# SOLIDUS, U+FF05 FULLWIDTH PERCENT SIGN and their kin would become `..`, `/` or a new escape.
_SYNTAX = "/.\\%?#;"


def _nfkc_adds_syntax(decoded: str) -> bool:
    normal = unicodedata.normalize("NFKC", decoded)
    return any(normal.count(c) != decoded.count(c) for c in _SYNTAX)


def _canonical_escape(escape: re.Match[str]) -> str:
    byte = int(escape[1], 16)
    if byte in _UNRESERVED:
        return chr(byte)
    if byte in _FORBIDDEN_ESCAPES:
        raise MalformedRequest("encoded slash, backslash, delimiter or control character in path")
    return "%" + escape[1].upper()


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if not kept:
                raise MalformedRequest("path climbs above the root")
            kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    if not kept:
        return "/"
    trailing_slash = segments[-1] in ("", ".", "..")
    return "/" + "/".join(kept) + ("/" if trailing_slash else "")
