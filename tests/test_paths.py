"""Request-target normalisation: what the gateway matches routes on is exactly what the upstream receives.

What aiohttp 3.14.5 hands the handler as `request.raw_path`, found by writing raw request lines to a
`web.Server` (test_aiohttp_hands_normalise_the_raw_target below keeps checking it):
- Non-ASCII bytes: the C parser answers 400 itself (path and query). The pure-Python parser
  (AIOHTTP_NO_EXTENSIONS=1) passes them through, decoded as UTF-8 with surrogateescape (`/bad\\udcff`).
- Controls (NUL, \\x01-\\x1f, TAB, DEL): 400 from both parsers. Space ends the target.
- `#`: kept in raw_path by both; `request.path` of `/a#f?x=1` is `/a#f` with the C parser but `/a` with the
  Python one, so a fragment is refused rather than interpreted.
- Absolute-form (`http://h/p?x=1`, any scheme, even `ftp://`, and userinfo `http://u:p@h/p`): raw_path is the
  whole URL; `http://h` gives request.path ''. normalise accepts http/https without userinfo and keeps the path
  (empty path = `/`); everything else is refused.
- `*`: GET gets a 400 from aiohttp, but `OPTIONS *` reaches the handler with raw_path '*', as does
  `CONNECT example.com:443` with raw_path 'example.com:443' (the Python parser then keeps the connection open
  as a tunnel): normalise refuses both.
- `\\`, `;`, `//`, `..`, `%2f`, `%00`, invalid `%zz` and `"<>{}|^\\`` all reach the handler untouched.
- Everything after the first `?` is the query (`/q??a` has query `?a`).
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from urllib.parse import quote, unquote, unquote_to_bytes

import pytest
from aiohttp import http_parser, web, web_protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import paths
from gateway.errors import MalformedRequest
from gateway.paths import normalise


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/v1/leads/insert?auth_token=abc&x=1", "/v1/leads/insert", "auth_token=abc&x=1"),
        ("/", "/", ""),
        ("/?", "/", ""),
        ("/a?b?c", "/a", "b?c"),
        ("/a?x=%zz&y=%2F", "/a", "x=%zz&y=%2F"),
        ("/a/b/", "/a/b/", ""),
        ("/a/b.json", "/a/b.json", ""),
        ("/...", "/...", ""),
        ("/a/.b/..c", "/a/.b/..c", ""),
        # runs of slashes merge
        ("//a//b", "/a/b", ""),
        ("///", "/", ""),
        ("/a//", "/a/", ""),
        # dot segments, plain and encoded in any case mix
        ("/a/./b/../c", "/a/c", ""),
        ("/a/b/.", "/a/b/", ""),
        ("/a/b/..", "/a/", ""),
        ("/a/..", "/", ""),
        ("/a/%2e/b", "/a/b", ""),
        ("/a/%2E%2e/b", "/b", ""),
        ("/a/.%2E/b", "/b", ""),
        ("/a/%2e./b", "/b", ""),
        ("/a/b/%2E%2E", "/a/", ""),
        ("/v1/admin/../leads/insert", "/v1/leads/insert", ""),
        ("/a//..//b", "/b", ""),
        # unreserved escapes decode, the rest stay encoded with uppercase hex
        ("/%41%62%7e%2d%5f%30", "/Ab~-_0", ""),
        ("/a%20b", "/a%20b", ""),
        ("/caf%c3%a9", "/caf%C3%A9", ""),
        ("/100%25", "/100%25", ""),
        ("/%25zz", "/%25zz", ""),
        # printable ASCII that URIs do not allow in a path is encoded, so it has one spelling
        ('/a|b"c', "/a%7Cb%22c", ""),
        ("/{x}[y]^`<>", "/%7Bx%7D%5By%5D%5E%60%3C%3E", ""),
        # absolute-form: the authority is dropped
        ("http://h.example/p/q?x=1", "/p/q", "x=1"),
        ("HTTPS://h.example:8443/p/../q", "/q", ""),
        ("http://h.example", "/", ""),
        ("http://h.example?x=1", "/", "x=1"),
        ("http://[::1]:80/p", "/p", ""),
    ],
)
def test_a_safe_target_is_normalised(target: str, path: str, query: str) -> None:
    assert normalise(target) == (path, query)
    assert normalise(path) == (path, "")


@pytest.mark.parametrize(
    "target",
    [
        "",
        "*",
        "a/relative",
        "example.com:443",
        "ftp://h.example/p",
        "http://user:pw@h.example/p",
        "http:///p",
        "http://h\\x/p",
        # fragments
        "/a#frag",
        "/a?x=1#frag",
        "/#",
        # climbing above the root
        "/..",
        "/../x",
        "/a/../..",
        "/%2e%2e",
        "/%2E%2e/x",
        "/.%2e/",
        "//../a",
        "http://h/../a",
        # encoded separators, NUL and other controls
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a%5Cb",
        "/a%00",
        "/a%01b",
        "/a%1F",
        "/a%7f",
        "/a%0d%0aX-Injected:%201",
        # encoded delimiters: an upstream that decodes before splitting reads another path and query
        "/a%3bb",
        "/a%3Bb",
        "/a%3Fb",
        "/a%3fauth_token=x",
        "/a%23c",
        # double encoding
        "/%252e",
        "/%252E%252E/x",
        "/%252f",
        "/%25%32%65",
        "/%25%41%42",
        # path parameters
        "/..;/admin",
        "/a;b",
        "/a;jsessionid=1/b",
        # backslash, controls, space, DEL, non-ASCII in the path or the query
        "/a\\..\\b",
        "/a\\b",
        "/a\tb",
        "/a b",
        "/a\x00",
        "/a\x7f",
        "/caf\u00e9",
        "/bad\udcff",
        "/a?q=\u00e9",
        "/a?q=a b",
        "/a?q=\x01",
        # bad escapes
        "/a%",
        "/a%2",
        "/a%zz",
        "/a%%41",
        # escapes that are not UTF-8: overlong, lone continuation, truncated, surrogate
        "/%c0%ae",
        "/%C0%AE%C0%AE/x",
        "/%e0%80%ae",
        "/%80",
        "/%c3",
        "/%c3a",
        "/%ed%a0%80",
    ],
)
def test_an_unsafe_target_is_malformed(target: str) -> None:
    with pytest.raises(MalformedRequest):
        normalise(target)


@pytest.mark.parametrize(
    "target", ["/v1/leads/insert?auth_token=abc&x=1", "/", "/a/b/", "/a/.b/c..d/...", "/x?q=%zz&r=a/../b"]
)
def test_the_common_case_takes_the_fast_path(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(_: str) -> None:
        raise AssertionError("slow path")

    monkeypatch.setattr(paths, "_normalise_slowly", slow)
    path, _, query = target.partition("?")
    assert normalise(target) == (path, query)


# -- properties ---------------------------------------------------------------------------------------------

_PIECES = (
    r"/ // . .. %2e %2E %2f %252e ; \ %00 a leads %41 %20 ~ ?x=1 %c3%a9 %C0%AE | %3b %25 # %e2%80%ae".split()
)


def _resolve(decoded: str) -> str:
    """Reference semantics of a decoded path: merge slashes, then resolve dot segments."""
    segments = decoded.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if segments[-1] in ("", ".", "..") else "")


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join).map(lambda s: "/" + s))
def test_a_normalised_path_is_canonical_and_means_the_same(target: str) -> None:
    try:
        path, query = normalise(target)
    except MalformedRequest:
        return
    assert normalise(path) == (path, "")
    assert path.startswith("/")
    assert "//" not in path
    assert not re.search(r"%25[0-9A-Fa-f]{2}", path)
    assert not re.search(r"%(?![0-9A-F]{2})", path), "escapes are uppercase"
    decoded = unquote_to_bytes(path).decode("utf-8")
    assert "\\" not in decoded and "\0" not in decoded and ";" not in path
    assert decoded.count("/") == path.count("/"), "no escape decodes to a slash"
    assert not {".", ".."} & set(decoded.split("/"))
    # The upstream, decoding once, sees the path the client asked for.
    raw_path = target.partition("?")[0]
    assert decoded == _resolve(unquote(raw_path))
    assert query == target.partition("?")[2]


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(lambda s: "/" + s))
def test_any_printable_target_is_refused_or_canonical(target: str) -> None:
    try:
        path, _ = normalise(target)
    except MalformedRequest:
        return
    assert normalise(path) == (path, "")
    assert re.fullmatch(r"(/[A-Za-z0-9\-._~!$&'()*+,=:@%]+)*/?", path)


# -- what aiohttp gives us ------------------------------------------------------------------------------------

_RAW_TARGETS: list[tuple[bytes, bytes, tuple[str, str] | str | None]] = [
    # (method, raw target, expected): a (path, query) pair, None for MalformedRequest, "400" when aiohttp refuses
    (b"GET", b"/v1/leads/insert?auth_token=abc&x=1", ("/v1/leads/insert", "auth_token=abc&x=1")),
    (b"GET", b"//a/./b/%2E%2e/c?q=1", ("/a/c", "q=1")),
    (b"GET", b"/a#frag?x=1", None),
    (b"GET", b"/a?x=1#frag", None),
    (b"GET", b"http://h.example/p/q?x=1", ("/p/q", "x=1")),
    (b"GET", b"http://h.example", ("/", "")),
    (b"GET", b"ftp://h.example/p", None),
    (b"GET", b"http://u:p@h.example/p", None),
    (b"OPTIONS", b"*", None),
    (b"CONNECT", b"example.com:443", None),
    (b"GET", b"/..;/admin", None),
    (b"GET", b"/a\\..\\b", None),
    (b"GET", b"/a%2fb", None),
    (b"GET", b"/a\x01b", "400"),
    (b"GET", b"/a\x7fb", "400"),
]
# Non-ASCII: the C parser refuses it itself, the Python parser hands it on and normalise refuses it.
_NON_ASCII = [b"/caf\xc3\xa9", b"/bad\xff", b"/a?q=\xc3\xa9"]


async def _send(port: int, method: bytes, target: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    # One response, by its length: after CONNECT the Python parser keeps the connection open as a tunnel.
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    body = await reader.readexactly(int(length[1])) if length else b""
    writer.close()
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_aiohttp_hands_normalise_the_raw_target(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if parser == "python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    elif http_parser.HttpRequestParserC is http_parser.HttpRequestParserPy:
        pytest.skip("aiohttp C extensions are not built")

    async def handler(request: web.BaseRequest) -> web.Response:
        try:
            path, query = normalise(request.raw_path)
        except MalformedRequest:
            return web.Response(status=400, text="malformed")
        return web.Response(text=f"{path} {query}")

    server = await asyncio.get_running_loop().create_server(web.Server(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cases = [*_RAW_TARGETS, *((b"GET", t, "400" if parser == "c" else None) for t in _NON_ASCII)]
        for method, target, expected in cases:
            status, body = await _send(port, method, target)
            if expected == "400":
                assert status == 400 and body != b"malformed", target
            elif expected is None:
                assert (status, body) == (400, b"malformed"), target
            else:
                assert (status, body.decode()) == (200, " ".join(expected)), target
    finally:
        server.close()
        await server.wait_closed()


# Characters whose NFKC form is path syntax (fullwidth and small forms, dot leaders), beside ordinary non-ASCII.
_NFKC_PIECES = "\uff0e\u2024\u2025\u2026\ufe52\uff0f\uff3c\uff05\uff1f\uff03\uff1b\u00e9\u6771a./"


@given(st.text(alphabet=_NFKC_PIECES, min_size=1, max_size=12))
def test_no_normalised_path_gains_syntax_under_nfkc(text: str) -> None:
    target = "/x/" + quote(text, safe="/")
    try:
        path, _ = normalise(target)
    except MalformedRequest:
        return
    decoded = unquote(path)
    normal = unicodedata.normalize("NFKC", decoded)
    for c in "/.\\%?#;":
        assert normal.count(c) == decoded.count(c), (target, path)
