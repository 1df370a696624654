"""Finds the caller's credential in the query, the body and `Authorization: Bearer`, and strips every copy.

A name counts when PHP would file it under the configured name, case aside (`auth.token`, `auth_token[]`,
`AUTH_TOKEN`), because the upstream reads requests the way PHP does; where parsers disagree we refuse or strip.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from json import JSONDecoder
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, but missing from typeshed
from typing import Literal
from urllib.parse import unquote_to_bytes

from gateway.errors import CredentialConflict, MalformedRequest

_NAME = re.compile(r"[A-Za-z0-9_\-]+")
# Parameters, parts or top-level members per place. Parsing runs on the event loop, and 10MB of `a&a&...` would
# otherwise hold it for a second; PHP itself reads only the first 1000 (max_input_vars).
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    query_param: str | None = "auth_token"  # None disables that place
    body_field: str | None = "auth_token"
    bearer: bool = True
    forward: bool = False  # False: strip every copy before forwarding

    def __post_init__(self) -> None:
        for key in ("query_param", "body_field"):
            name = getattr(self, key)
            if name is not None and not _NAME.fullmatch(name):
                raise ValueError(f"credentials.{key}: use letters, digits, '_' and '-' only, got {name!r}")


BodyKind = Literal["form", "multipart", "json"] | None


@dataclass(slots=True)
class Found:
    token: str | None  # the single credential value, None when absent
    query: str  # the query to forward (credential params removed when spec.forward is False)
    body: bytes | None  # the body to forward; the same object when untouched
    strip_authorization: bool  # the Authorization header carried the credential and must not be forwarded


# PHP cuts the media type at the first of these, so `application/x-www-form-urlencoded,x` is still a form to it.
_MEDIA_TYPE_END = re.compile(r"[;, \t]")


def body_kind(spec: CredentialSpec, content_type: str | None) -> BodyKind:
    """Which kind of body must be read for the credential; None means it holds none."""
    if spec.body_field is None:
        return None
    return media_kind(content_type)


def media_kind(content_type: str | None) -> BodyKind:
    """Which kind of parameter-carrying body this is (and so must be buffered and read); None: stream it unread.

    Every type a common framework parses for parameters is read (SECURITY.md, "Where frameworks read the
    credential"): no Content-Type at all (Rack takes such a POST for a form), any `urlencoded` type, every
    `multipart/*`, and JSON as Rails (`text/x-json`, `application/jsonrequest`), ASP.NET Core (`text/json`) and
    Spring (`application/*+json`) accept it. Binary and text types stream unread.
    """
    if content_type is None:
        return "form"
    media_type = content_type.strip()
    end = _MEDIA_TYPE_END.search(media_type)
    if end is not None:
        media_type = media_type[: end.start()]
    media_type = media_type.lower()
    if not media_type:
        return "form"
    if media_type == "application/x-www-form-urlencoded":
        return "form"
    top, _, subtype = media_type.partition("/")
    if top == "multipart":
        return "multipart"
    if subtype in _JSON_SUBTYPES or subtype.endswith("+json"):
        return "json"
    if "urlencoded" in subtype.replace("-", ""):
        return "form"
    return None


_JSON_SUBTYPES = frozenset({"json", "x-json", "jsonrequest"})
# Charsets a read body may declare: anything else (UTF-16 forms, ASP.NET's and Spring's transcoding of JSON) would
# let the upstream read names and values we cannot, so it is refused rather than guessed at.
_READABLE_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def check_charset(content_type: str | None) -> None:
    """Refuse a read body whose declared charset the upstream could decode differently from us."""
    if not content_type or "charset" not in content_type.lower():
        return
    for key, value, _ in _parameters(content_type.partition(";")[2] if ";" in content_type else ""):
        if key == "charset" and value.lower() not in _READABLE_CHARSETS:
            raise MalformedRequest(f"body charset {value!r}: only UTF-8 bodies are read for credentials")


def find(
    spec: CredentialSpec, query: str, authorization: list[str], content_type: str | None, body: bytes | None
) -> Found:
    """The one credential of a request, and the query and body to forward.

    Raises CredentialConflict for two different values anywhere, MalformedRequest for a body that has to be
    read and cannot be, or for more than one Authorization header.
    """
    strip = not spec.forward
    values: list[str] = []

    forward_query = query
    if spec.query_param is not None and query:
        name = _name(spec.query_param)
        if "%" in query or name.probe.search(query.lower()):
            found, stripped = _scan_form(query, name, strip)
            values += found
            if stripped is not None:
                forward_query = stripped

    forward_body = body
    kind = body_kind(spec, content_type)
    if kind is not None and body:
        # body_kind is only set when both are
        found, stripped_body = _scan_body(kind, _name(spec.body_field or ""), content_type or "", body, strip)
        values += found
        if stripped_body is not None:
            forward_body = stripped_body

    strip_authorization = False
    if spec.bearer and authorization:
        bearer = _bearer(authorization)
        if bearer is not None:
            values.append(bearer)
            strip_authorization = strip

    token = values[0] if values else None
    for value in values:
        if value != token:
            raise CredentialConflict("different credential values in one request")
    return Found(token, forward_query, forward_body, strip_authorization)


def _scan_body(
    kind: BodyKind, name: _Name, content_type: str, body: bytes, strip: bool
) -> tuple[list[str], bytes | None]:
    if kind == "form":
        if b"%" in body or _mentions(name, body):
            values, stripped = _scan_form(body.decode("latin-1"), name, strip)
            return values, None if stripped is None else stripped.encode("latin-1")
        return [], None
    if kind == "json":
        # `\u` escapes can spell any key; NUL bytes suggest UTF-16, which some parsers would accept.
        if b"\\u" in body or b"\0" in body or _mentions(name, body):
            return _scan_json(body, name, strip)
        return [], None
    # No probe for multipart: finding the delimiters costs less than searching the body for every spelling of
    # the name (backslash escapes included), and every multipart body is then held to the same rules.
    return _scan_multipart(body, content_type, name, strip)


# Frameworks (Laravel, Symfony, Rails) take a `_method` parameter as the request's real method.
METHOD_OVERRIDE = "_method"


def without_method_override(found: Found, content_type: str | None) -> Found:
    """`found` with every `_method` parameter (any spelling PHP files under it) removed from query and body.

    The permission was decided on the method the gateway saw, so no parameter may change it behind our back.
    """
    name = _name(METHOD_OVERRIDE)
    query = found.query
    if query and ("%" in query or name.probe.search(query.lower())):
        _, stripped = _scan_form(query, name, True)
        if stripped is not None:
            query = stripped
    body = found.body
    kind = media_kind(content_type)
    if kind is not None and body:
        _, stripped_body = _scan_body(kind, name, content_type or "", body, True)
        if stripped_body is not None:
            body = stripped_body
    if query is found.query and body is found.body:
        return found
    return Found(found.token, query, body, found.strip_authorization)


def redact_query(spec: CredentialSpec, query: str) -> str:
    """The query without its credential parameters, for logs; never raises.

    Stricter than `find`: `;` also separates parameters here, because some servers read it so, and a log must not
    keep a credential that another parser would have found.
    """
    if spec.query_param is None or not query:
        return query
    name = _name(spec.query_param)
    if "%" not in query and not name.probe.search(query.lower()):
        return query
    pieces = _LOG_SEPARATOR.split(query)  # parameter, separator, parameter, ...
    kept: list[str] = []
    for piece, separator in zip(pieces[::2], ["", *pieces[1::2]], strict=True):
        if not _is_form_credential(piece.partition("=")[0], name):
            kept.append(separator + piece if kept else piece)
    return "".join(kept)


def redact_target(spec: CredentialSpec, target: str) -> tuple[str, str]:
    """(path, query) of a request-target that could not be normalised, safe to log; never raises.

    The fragment is dropped, userinfo of an absolute-form target hidden, the path cut at an encoded delimiter, and
    credential parameters removed from the query and from `;` path parameters.
    """
    target = target.partition("#")[0]
    path, _, query = target.partition("?")
    path = _USERINFO.sub(r"\1***@", path, count=1)
    # An encoded `?`, `#` or `;` in the path starts, to an upstream that decodes first, a query, a fragment or a
    # parameter that may carry a credential: the logged path ends there.
    path = _ENCODED_DELIMITER.split(path, maxsplit=1)[0]
    if spec.query_param is not None and ";" in path:
        name = _name(spec.query_param)
        path = _PATH_PARAMETER.sub(
            lambda m: "" if _is_form_credential(m[1].partition("=")[0], name) else m[0], path
        )
    return path[:2048], redact_query(spec, query)[:2048]


_LOG_SEPARATOR = re.compile(r"([&;])")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?@]*@")
_PATH_PARAMETER = re.compile(r";([^;/]*)")
_ENCODED_DELIMITER = re.compile(r"%(?:3[fFbB]|23)")


# -- names ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Name:
    canonical: bytes  # the configured name, lowercased
    plain: str
    # Searched in the lowercased text: a miss means no spelling PHP would file under the name is there (escapes
    # aside, which the callers check for), so the parse is skipped.
    probe: re.Pattern[str]
    probe_bytes: re.Pattern[bytes]


@functools.lru_cache(maxsize=16)
def _name(configured: str) -> _Name:
    # PHP turns ' ', '.', '+' (a form-encoded space) and an unmatched '[' into '_'.
    pattern = "".join("[_. +\\[]" if c == "_" else re.escape(c) for c in configured.lower())
    return _Name(
        canonical=configured.lower().encode(),
        plain=configured.lower(),
        probe=re.compile(pattern),
        probe_bytes=re.compile(pattern.encode()),
    )


def _mentions(name: _Name, data: bytes) -> bool:
    """Whether `data` may spell the name anywhere: a miss means no parse is needed.

    Non-ASCII can spell it too (KELVIN SIGN U+212A and LONG S U+017F case-fold to `k` and `s`, fullwidth letters
    NFKC-normalise to ASCII), so such data is folded first; C-speed either way.
    """
    if name.probe_bytes.search(data.lower()):
        return True
    if data.isascii():
        return False
    return name.probe.search(_fold_text(data.decode("utf-8", "replace"))) is not None


def _fold_text(text: str) -> str:
    """NFKC and case folding, as the most lenient upstream compares names (Java's equalsIgnoreCase, .NET, NFKC)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _names_credential(raw: bytes, name: _Name) -> bool:
    """Whether a name, as raw bytes, is the credential's to PHP or, folded, to a lenient upstream."""
    if _php_name(raw) == name.canonical:
        return True
    if raw.isascii():
        return False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False  # no upstream reads an invalid UTF-8 name as text
    return _php_name(_fold_text(text).encode("utf-8")) == name.canonical


_PHP_MANGLE = bytes.maketrans(b" .", b"__")
_PHP_MANGLE_REST = bytes.maketrans(b" .[", b"___")


def _php_name(raw: bytes) -> bytes:
    """The key PHP files a request variable under, lowercased.

    `auth.token`, `auth token`, ` auth_token`, `auth_token[]`, `auth_token[x]`, `auth[token` and
    `auth_token%00junk` all end up in `$_REQUEST['auth_token']`.
    """
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    raw = raw.lstrip(b" ")
    bracket = raw.find(b"[")
    if bracket < 0:
        raw = raw.translate(_PHP_MANGLE)
    elif raw.find(b"]", bracket + 1) >= 0:
        raw = raw[:bracket].translate(_PHP_MANGLE)
    else:
        raw = raw[:bracket].translate(_PHP_MANGLE) + b"_" + raw[bracket + 1 :].translate(_PHP_MANGLE_REST)
    return raw.lower()


_PHP_SPECIAL = re.compile(r"[%+. \[\0]")


def _is_form_credential(raw_name: str, name: _Name) -> bool:
    if raw_name.lower() == name.plain:
        return True
    if raw_name.isascii() and not _PHP_SPECIAL.search(raw_name):
        return False
    return _names_credential(_form_decode(raw_name), name)


def _form_decode(text: str) -> bytes:
    # Lenient like PHP: an invalid escape stays as it is. latin-1 maps a body's bytes back unchanged (a query
    # is ASCII after normalise; "replace" only keeps redact_query from ever raising).
    return unquote_to_bytes(text.replace("+", " ").encode("latin-1", "replace"))


# -- query and form-urlencoded ------------------------------------------------------------------------------------


def _scan_form(text: str, name: _Name, strip: bool) -> tuple[list[str], str | None]:
    """Credential values of an urlencoded text, and the text without them when stripping removed anything.

    `;` separates parameters too: Rack before 3 and Go before 1.17 split on it, so `x=1;auth_token=B` carries a
    credential to them. A `;` piece naming the credential is one like any other (decided on, conflicting, stripped);
    every other `;` stays where it was.
    """
    if text.count("&") + text.count(";") >= MAX_ENTRIES:
        raise MalformedRequest(f"more than {MAX_ENTRIES} parameters")
    values: list[str] = []
    kept: list[str] = []
    for pair in text.split("&"):
        if ";" in pair:
            pieces = pair.split(";")
            rest = [piece for piece in pieces if not _is_form_credential(piece.partition("=")[0], name)]
            if len(rest) != len(pieces):
                values += [_form_value(p.partition("=")[2]) for p in pieces if p not in rest]
                pair = ";".join(rest)
                if pair:
                    kept.append(pair)
                continue
        raw_name, _, raw_value = pair.partition("=")
        if _is_form_credential(raw_name, name):
            values.append(_form_value(raw_value))
        elif pair:  # empty pieces (`a&&b`) carry nothing; dropping them leaves no stray `&&` behind
            kept.append(pair)
    if not values or not strip:
        return values, None
    return values, "&".join(kept)


def _form_value(raw: str) -> str:
    if "%" not in raw and "+" not in raw and raw.isascii():
        return raw
    return _utf8(_form_decode(raw))


def _utf8(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest("credential value is not UTF-8") from exc


# -- JSON -------------------------------------------------------------------------------------------------------


def _ignore(_: str) -> None:
    return None


def _refuse_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


# Numbers are never converted: nothing needs their value, and huge ones would hit int's digit limit.
_JSON = JSONDecoder(parse_int=_ignore, parse_float=_ignore, parse_constant=_refuse_constant)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _after_space(text: str, position: int) -> int:
    return _JSON_SPACE.match(text, position).end()  # type: ignore[union-attr]  # always matches


def _scan_json(body: bytes, name: _Name, strip: bool) -> tuple[list[str], bytes | None]:
    """Credential values among the top-level members, and the body with those members cut out of the text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest("JSON body is not UTF-8") from exc
    try:
        members = _top_level_members(text)
    except MalformedRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest("invalid JSON body") from exc
    values: list[str] = []
    credential: list[bool] = []
    for key, value, _, _ in members:
        is_credential = _is_json_credential(key, name)
        credential.append(is_credential)
        if is_credential:
            if not isinstance(value, str):
                raise MalformedRequest("JSON credential is not a string")
            values.append(_utf8(value.encode("utf-8", "surrogatepass")))
    if not values or not strip:
        return values, None
    # Cut members out of the text rather than re-serialise: every other byte reaches the upstream as sent.
    # Between two kept members goes the separator that followed the first of them in the original.
    first_start, last_end = members[0][2], members[-1][3]
    pieces = [text[:first_start]]
    previous = -1
    for index, (_, _, start, end) in enumerate(members):
        if credential[index]:
            continue
        if previous >= 0:
            pieces.append(text[members[previous][3] : members[previous + 1][2]])
        pieces.append(text[start:end])
        previous = index
    pieces.append(text[last_end:])
    return values, "".join(pieces).encode("utf-8")


def _top_level_members(text: str) -> list[tuple[str, object, int, int]]:
    """(key, value, start, end) of each member of a top-level object; [] for any other valid JSON."""
    position = _after_space(text, 0)
    if not text.startswith("{", position):
        _JSON.decode(text)
        return []
    members: list[tuple[str, object, int, int]] = []
    position = _after_space(text, position + 1)
    if text.startswith("}", position):
        position += 1
    else:
        while True:
            if not text.startswith('"', position):
                raise MalformedRequest("invalid JSON body: expected a member name")
            key, after_key = scanstring(text, position + 1, True)
            colon = _after_space(text, after_key)
            if not text.startswith(":", colon):
                raise MalformedRequest("invalid JSON body: expected ':'")
            value_start = _after_space(text, colon + 1)
            value, end = _JSON.raw_decode(text, value_start)
            members.append((key, value, position, end))
            if len(members) > MAX_ENTRIES:
                raise MalformedRequest(f"more than {MAX_ENTRIES} JSON members")
            position = _after_space(text, end)
            if text.startswith(",", position):
                position = _after_space(text, position + 1)
            elif text.startswith("}", position):
                position += 1
                break
            else:
                raise MalformedRequest("invalid JSON body: expected ',' or '}'")
    if _after_space(text, position) != len(text):
        raise MalformedRequest("invalid JSON body: data after the object")
    return members


def _is_json_credential(key: str, name: _Name) -> bool:
    lowered = key.lower()
    if lowered == name.plain:
        return True
    if key.isascii() and not _PHP_SPECIAL.search(key):
        return False
    return _names_credential(key.encode("utf-8", "surrogatepass"), name)


# -- multipart/form-data --------------------------------------------------------------------------------------------


def _scan_multipart(
    body: bytes, content_type: str, name: _Name, strip: bool
) -> tuple[list[str], bytes | None]:
    """Credential values among the parts, and the body without the credential parts.

    A delimiter is any line that starts with `--boundary`, after LF or CRLF, as PHP finds them; a delimiter
    line we cannot read, or one after the close delimiter, is refused instead of being taken for content.
    """
    delimiter = b"--" + _boundary(content_type)
    starts = [0] if body.startswith(delimiter) else []
    found = body.find(b"\n" + delimiter)
    while found >= 0:
        starts.append(found + 1)
        if len(starts) > MAX_ENTRIES + 1:
            raise MalformedRequest(f"more than {MAX_ENTRIES} multipart parts")
        found = body.find(b"\n" + delimiter, found + 1 + len(delimiter))
    if not starts:
        raise MalformedRequest("multipart body without a delimiter")

    values: list[str] = []
    removed: list[tuple[int, int]] = []
    for index, start in enumerate(starts):
        after = start + len(delimiter)
        if body.startswith(b"--", after):
            if index != len(starts) - 1:
                raise MalformedRequest("multipart delimiter after the close delimiter")
            break
        if index == len(starts) - 1:
            raise MalformedRequest("multipart body without a close delimiter")
        next_start = starts[index + 1]
        # The line break before the next delimiter belongs to that delimiter, not to this part's content.
        content_end = next_start - 1
        if body[content_end - 1 : content_end] == b"\r":
            content_end -= 1
        is_credential, content_start = _part_head(body, after, content_end, name)
        if is_credential:
            values.append(_utf8(body[content_start:content_end]))
            removed.append((start, next_start))
    if not values or not strip:
        return values, None
    # From a credential part's delimiter to the next delimiter: what remains is still a valid multipart body.
    pieces = []
    kept_from = 0
    for start, end in removed:
        pieces.append(body[kept_from:start])
        kept_from = end
    pieces.append(body[kept_from:])
    return values, b"".join(pieces)


_TRANSPORT_PADDING = re.compile(rb"[ \t]*\r?\n")


def _part_head(body: bytes, after_delimiter: int, content_end: int, name: _Name) -> tuple[bool, int]:
    """Whether a part is a credential, and where its content starts."""
    line_end = _TRANSPORT_PADDING.match(body, after_delimiter, content_end)
    if line_end is None:
        raise MalformedRequest("unreadable multipart delimiter line")
    position = line_end.end()
    headers: list[list[str]] = []
    while True:
        newline = body.find(b"\n", position, content_end)
        if newline < 0:
            raise MalformedRequest("multipart part headers do not end")
        line = body[position:newline].removesuffix(b"\r").decode("latin-1")
        position = newline + 1
        if not line:
            break
        if line[0] in " \t":
            if not headers:
                raise MalformedRequest("multipart part header starts with a continuation")
            headers[-1][1] += " " + line.strip()
            continue
        header, colon, value = line.partition(":")
        if not colon:
            raise MalformedRequest("unparseable multipart part header")
        headers.append([header.strip().lower(), value.strip()])

    dispositions = [value for header, value in headers if header == "content-disposition"]
    if len(dispositions) > 1:
        raise MalformedRequest("multipart part with several Content-Disposition headers")
    if not dispositions or not _is_part_credential(dispositions[0], name):
        return False, position
    encodings = [value.lower() for header, value in headers if header == "content-transfer-encoding"]
    if any(encoding not in ("7bit", "8bit", "binary") for encoding in encodings):
        raise MalformedRequest("encoded multipart credential")
    return True, position


def _is_part_credential(disposition: str, name: _Name) -> bool:
    names = []
    for key, value, raw in _parameters(disposition):
        if key == "name":
            names.append((value, raw))
        elif key.startswith("name*"):
            # RFC 7578 forbids RFC 2231 names; PHP ignores them while other parsers decode them.
            raise MalformedRequest("multipart part with an RFC 2231 name")
    if len(names) > 1:
        raise MalformedRequest("multipart part with several names")
    if not names:
        return False
    value, raw = names[0]
    # Quoted-string unescaping (RFC) or not (PHP), and PHP's single quotes: any reading that names the credential.
    candidates = {value, raw}
    candidates |= {c[1:-1] for c in candidates if len(c) >= 2 and c[0] == c[-1] == "'"}
    return any(_names_credential(c.encode("latin-1", "replace"), name) for c in candidates)


def _boundary(content_type: str) -> bytes:
    # PHP takes the first "boundary" anywhere in the header: with more than one we could split differently.
    if content_type.lower().count("boundary") != 1:
        raise MalformedRequest("multipart content type without exactly one boundary")
    boundaries = [(value, raw) for key, value, raw in _parameters(content_type) if key == "boundary"]
    if len(boundaries) != 1:
        raise MalformedRequest("multipart content type without a boundary")
    value, raw = boundaries[0]
    # PHP ends an unquoted boundary at ',' and never unescapes a quoted one.
    if not value or len(value) > 200 or value != raw or "," in value or not value.isascii():
        raise MalformedRequest("unusable multipart boundary")
    return value.encode("ascii")


_PARAMETER = re.compile(
    r'[ \t]*([^=; \t]*)[ \t]*(?:=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^;"]*))[ \t]*)?(?=;|\Z)', re.S
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _parameters(header: str) -> list[tuple[str, str, str]]:
    """(lowercased key, value, value as written) of each `key=value` of a header; bare words are skipped.

    The first item is parsed too: PHP reads `name=` even where the disposition type should be.
    """
    parameters = []
    position = 0
    while True:
        item = _PARAMETER.match(header, position)
        if item is None:
            raise MalformedRequest("unparseable header parameters")
        key, quoted, unquoted = item.groups()
        if quoted is not None:
            parameters.append((key.lower(), _QUOTED_PAIR.sub(r"\1", quoted), quoted))
        elif unquoted is not None:
            parameters.append((key.lower(), unquoted.strip(), unquoted.strip()))
        position = item.end() + 1
        if position > len(header):
            return parameters


# -- cookies ------------------------------------------------------------------------------------------------------


def refuse_credential_cookies(spec: CredentialSpec, cookies: list[str]) -> None:
    """Raise MalformedRequest when a cookie is named like the credential.

    PHP merges cookies into `$_REQUEST` (with no php.ini, or `request_order` naming C) and ASP.NET's `Request[name]`
    reads them, so such a cookie is a credential the gateway never decided on. The contract lists no cookie place,
    so it is refused rather than read. The cookie header is split like PHP splits it (`;` and `,`).
    """
    names = [_name(n) for n in (spec.query_param, spec.body_field) if n is not None]
    for header in cookies:
        if (
            not any(name.probe.search(header.lower()) for name in names)
            and "%" not in header
            and header.isascii()
        ):
            continue
        for pair in _COOKIE_SEPARATOR.split(header):
            raw = pair.partition("=")[0].strip(" \t")
            if raw and any(_is_form_credential(raw, name) for name in names):
                raise MalformedRequest("a cookie named like the credential")


_COOKIE_SEPARATOR = re.compile(r"[;,]")


# -- Authorization ----------------------------------------------------------------------------------------------


def _bearer(authorization: list[str]) -> str | None:
    if len(authorization) > 1:
        raise MalformedRequest("more than one Authorization header")
    # Any whitespace after the scheme: a lenient upstream would still read `Bearer<TAB>token`.
    scheme, *credentials = authorization[0].split(None, 1)[:2] or [""]
    if scheme.lower() != "bearer":
        return None
    return credentials[0].strip() if credentials else ""
