"""Fuzzing. Credential extraction and path normalisation raise nothing but their two refusals and leave no copy of
the credential behind; random request bytes never make a worker answer 500 or stop serving.

`make test` runs a few hundred examples; `make fuzz` sets FUZZ_EXAMPLES for a long run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.credentials import CredentialSpec, find
from gateway.errors import CredentialConflict, MalformedRequest
from gateway.paths import normalise
from tests.conftest import READER
from tests.security.wire import exchange, parse_responses, request

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# --- credential extraction and path normalisation ------------------------------------------------------------------

_NAME_PIECES = [
    "auth",
    "_",
    "token",
    "AUTH",
    "TOKEN",
    ".",
    " ",
    "+",
    "[",
    "]",
    "%5F",
    "%00",
    "%20",
    "%2e",
    "x",
]
_VALUE_PIECES = [
    "secret",
    "SECRET",
    "%",
    "%41",
    "%zz",
    "+",
    "=",
    "&",
    "\\u0041",
    '"',
    "é",
    "%C3%A9",
    "%ff",
    "",
]


def _names() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(_NAME_PIECES), min_size=1, max_size=6).map("".join)


def _values() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(_VALUE_PIECES), max_size=4).map("".join)


def _forms() -> st.SearchStrategy[str]:
    pair = st.tuples(_names(), _values()).map(lambda p: f"{p[0]}={p[1]}")
    return st.lists(st.one_of(pair, _names(), st.text(max_size=8)), max_size=6).map("&".join)


def _jsons() -> st.SearchStrategy[bytes]:
    member = st.tuples(_names(), st.one_of(_values(), st.integers(), st.none(), st.just({"auth_token": "x"})))
    as_text = st.lists(member, max_size=5).map(
        lambda members: "{" + ", ".join(f'"{k}": {_json_value(v)}' for k, v in members) + "}"
    )
    return st.one_of(as_text, st.text(max_size=40)).map(lambda t: t.encode("utf-8", "surrogatepass"))


def _json_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return '{"auth_token": "x"}'
    return "null" if value is None else str(value)


def _multiparts() -> st.SearchStrategy[bytes]:
    part = st.tuples(_names(), _values()).map(
        lambda p: f'--B\r\nContent-Disposition: form-data; name="{p[0]}"\r\n\r\n{p[1]}\r\n'
    )
    return st.lists(part, max_size=4).map(
        lambda parts: ("".join(parts) + "--B--\r\n").encode("utf-8", "surrogatepass")
    )


_BODIES = st.one_of(
    st.tuples(
        st.just("application/x-www-form-urlencoded"),
        _forms().map(lambda f: f.encode("utf-8", "surrogatepass")),
    ),
    st.tuples(st.just("application/json"), _jsons()),
    st.tuples(st.just("multipart/form-data; boundary=B"), _multiparts()),
    st.tuples(
        st.sampled_from(["text/plain", "multipart/form-data", "application/json; charset=utf-16"]),
        st.binary(max_size=40),
    ),
    st.just((None, None)),
)
_AUTHORIZATION = st.lists(
    st.one_of(st.just("Bearer secret"), _values().map("Bearer ".__add__), st.text(max_size=10)), max_size=2
)


@FUZZ
@given(
    query=_forms(),
    body=_BODIES,
    authorization=_AUTHORIZATION,
    spec=st.builds(CredentialSpec, forward=st.booleans(), bearer=st.booleans()),
)
def test_credential_extraction_refuses_or_removes_every_copy(query, body, authorization, spec):
    content_type, payload = body
    try:
        found = find(spec, query, authorization, content_type, payload)
    except (CredentialConflict, MalformedRequest):
        return
    if found.token is None or spec.forward:
        return
    # What is forwarded holds no credential any more (the Authorization header goes when it carried one).
    again = find(
        spec, found.query, [] if found.strip_authorization else authorization, content_type, found.body
    )
    assert again.token is None


_PATH_PIECES = (
    r"/ // . .. %2e %2E %2f %5c %252e %25 ; \ %00 %0d%0a %c0%ae %C0%AF %e2%80%ae a ~ ?x=1 # %41 %7e |".split()
)


@FUZZ
@given(
    st.one_of(
        st.lists(st.sampled_from(_PATH_PIECES), max_size=14).map(lambda p: "/" + "".join(p)),
        st.text(max_size=40),
    )
)
def test_path_normalisation_refuses_or_is_canonical(target):
    try:
        path, _ = normalise(target)
    except MalformedRequest:
        return
    assert normalise(path) == (path, "")
    assert path.startswith("/") and "//" not in path
    assert path.isascii() and "#" not in path and "\\" not in path


# --- random requests against a running worker ----------------------------------------------------------------------

_REQUEST_PIECES = [
    b"GET ",
    b"POST ",
    b"/v1/leads/search",
    b"/v1/admin/x",
    b"?auth_token=" + READER.encode(),
    b"%2e%2e/",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r",
    b"Host: x",
    b"Content-Length: 5",
    b"Content-Length: -1",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Content-Type: application/json",
    b"Content-Type: application/x-www-form-urlencoded",
    b"Content-Type: multipart/form-data; boundary=b",
    b"Content-Encoding: gzip",
    b"Authorization: Bearer " + READER.encode(),
    b"Authorization: Bearer x",
    b"Connection: close",
    b"Connection: X-Gateway-Token-Id",
    b"Expect: 100-continue",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"ffffffffffffffffff\r\n",
    b'{"auth_token": "x"',
    b"auth_token=",
    b"--b\r\n",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
]


_running: list = []


async def _fuzz_gateway(start_gateway):
    # One worker for every example: hypothesis reuses the function's fixtures across examples.
    if not _running or _running[0][0] is not start_gateway:
        _running[:] = [
            (
                start_gateway,
                await start_gateway({"server": {"header_timeout": "0.2s", "body_timeout": "0.2s"}}),
            )
        ]
    return _running[0][1]


@settings(FUZZ, max_examples=max(50, EXAMPLES // 4))
@given(
    st.lists(st.one_of(st.sampled_from(_REQUEST_PIECES), st.binary(max_size=6)), min_size=1, max_size=30).map(
        b"".join
    )
)
async def test_no_request_bytes_make_a_worker_answer_500_or_stop_serving(start_gateway, upstream, data):
    # A short header deadline ends incomplete requests quickly; bodies get the same time to arrive.
    gateway = await _fuzz_gateway(start_gateway)
    result = await exchange(
        gateway.port, data + b"\r\n\r\n", timeout=2, until=lambda d: bool(parse_responses(d))
    )
    for response in parse_responses(result.data):
        assert response.status < 500 or response.status in (502, 503, 504), (data, result.data)
    check = await exchange(
        gateway.port, request("GET", "/v1/leads/search", [("Authorization", f"Bearer {READER}")], close=True)
    )
    assert [r.status for r in check.responses] == [200]
