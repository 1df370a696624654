"""Issue 10 items 2 and 6: other spellings of a protected route, and characters NFKC turns into path syntax.

Express matches routes case-insensitively and ignores a trailing slash, Rails and old Spring take `/insert.json` for
`/insert`, IIS drops trailing dots and spaces: an upstream runs the insert handler for every spelling below, so the
gateway must decide them as the insert route, never as "unmatched" or as a broader read route listed after it.
"""

from __future__ import annotations

import pytest

from tests.conftest import CREATOR, READER, wait_until

# No prefix route: the only way past the insert route is to be "unmatched".
ROUTES_WITHOUT_PREFIX = """
[server]
listen = "127.0.0.1:0"
unmatched = "allow-authenticated"

[admin]
listen = "127.0.0.1:0"

[[routes]]
path = "/v1/leads/insert"
methods = ["POST"]
permission = "leads:create"

[[routes]]
path = "/admin/*"
permission = "admin"

[[tokens]]
name = "reader"
secret = "reader-secret-0001"
permissions = ["leads:read"]

[[tokens]]
name = "creator"
secret = "creator-secret-0002"
permissions = ["leads:create"]
"""

ALIASES = [
    ("POST", "/v1/leads/INSERT"),
    ("POST", "/v1/leads/Insert"),
    ("POST", "/v1/leads/insert/"),
    ("POST", "/v1/leads/insert."),
    ("POST", "/v1/leads/insert.."),
    ("POST", "/v1/leads/insert%2e"),
    ("POST", "/v1/leads/insert.json"),
    ("POST", "/v1/leads/INSERT.JSON/"),
    ("POST", "/v1/leads/insert%20"),
    ("POST", "/v1/leads/insert.%20"),
    ("POST", "/V1/Leads./insert"),
    ("PUT", "/v1/leads/insert"),
    ("GET", "/v1/leads/insert"),
    ("DELETE", "/v1/leads/insert.xml"),
    ("GET", "/ADMIN/users"),
    ("GET", "/Admin/users.json"),
    ("GET", "/admin.json"),
    ("GET", "/admin./users"),
]


@pytest.mark.parametrize(("method", "path"), ALIASES)
async def test_an_alias_of_a_route_is_that_route_under_allow_authenticated(
    start_gateway, upstream, method, path
):
    gw = await start_gateway(text=ROUTES_WITHOUT_PREFIX)

    response = await gw.request(method, f"{path}?auth_token={READER}")

    assert response.status == 403
    assert await response.json() == {"success": False, "error": "Insufficient permissions for this operation"}
    assert upstream.received == []
    [record] = await wait_until(gw.log_lines)
    assert record["outcome"] == "forbidden"
    assert record["route"] in ("/v1/leads/insert", "/admin/*")


async def test_an_alias_is_forwarded_byte_exact_for_a_token_that_holds_the_route(start_gateway, upstream):
    gw = await start_gateway(text=ROUTES_WITHOUT_PREFIX)

    response = await gw.post(f"/v1/leads/INSERT.json?auth_token={CREATOR}")

    assert response.status == 200
    assert upstream.last().target == "/v1/leads/INSERT.json"
    [record] = await wait_until(gw.log_lines)
    assert (record["route"], record["permission"]) == ("/v1/leads/insert", "leads:create")


async def test_a_path_that_is_no_routes_spelling_is_still_unmatched_and_allowed(start_gateway, upstream):
    gw = await start_gateway(text=ROUTES_WITHOUT_PREFIX)

    for path in ("/v1/leads/inserts", "/v1/leads/insert-batch", "/v1/leads/insert/x", "/administrators"):
        response = await gw.post(f"{path}?auth_token={READER}")
        assert response.status == 200, path
    assert [r.path for r in upstream.received] == [
        "/v1/leads/inserts",
        "/v1/leads/insert-batch",
        "/v1/leads/insert/x",
        "/administrators",
    ]


# The shared test config lists `/v1/leads/insert` (POST, leads:create) before `/v1/leads/*` (leads:read): a reader
# must not reach insert through the prefix route by another spelling or another method, in either unmatched mode.
@pytest.mark.parametrize("unmatched", ["deny", "allow-authenticated"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/leads/INSERT"),
        ("POST", "/v1/leads/insert/"),
        ("POST", "/v1/leads/insert.json"),
        ("PUT", "/v1/leads/insert"),
        ("PATCH", "/v1/leads/Insert."),
    ],
)
async def test_a_broader_route_listed_later_does_not_take_another_spelling_of_an_earlier_one(
    start_gateway, upstream, unmatched, method, path
):
    gw = await start_gateway({"server": {"unmatched": unmatched}})

    response = await gw.request(method, f"{path}?auth_token={READER}")

    assert response.status == 403
    assert upstream.received == []


async def test_the_prefix_route_still_serves_its_own_paths(gateway, upstream):
    for path in ("/v1/leads/search", "/v1/leads/insertion-report", "/v1/leads/42.json"):
        response = await gateway.get(f"{path}?auth_token={READER}")
        assert response.status == 200, path


async def test_routes_split_by_method_on_one_path_keep_their_split(start_gateway, upstream):
    text = ROUTES_WITHOUT_PREFIX.replace(
        '[[routes]]\npath = "/admin/*"\npermission = "admin"',
        '[[routes]]\npath = "/v1/leads/*"\nmethods = ["GET"]\npermission = "leads:read"\n\n'
        '[[routes]]\npath = "/v1/leads/notes"\nmethods = ["POST"]\npermission = "leads:create"',
    )
    gw = await start_gateway(text=text)

    response = await gw.post(f"/v1/leads/notes?auth_token={CREATOR}")

    assert response.status == 200
    [record] = await wait_until(gw.log_lines)
    assert record["route"] == "/v1/leads/notes"


# --- item 6: NFKC ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/leads/%EF%BC%8E%EF%BC%8E/insert",  # U+FF0E FULLWIDTH FULL STOP, twice: `..` after NFKC
        "/v1/leads/%E2%80%A5/insert",  # U+2025 TWO DOT LEADER
        "/v1/leads/x%EF%BC%8F..%EF%BC%8Finsert",  # U+FF0F FULLWIDTH SOLIDUS
        "/v1/leads/x%EF%BC%BC..%EF%BC%BCinsert",  # U+FF3C FULLWIDTH REVERSE SOLIDUS
        "/v1/leads/%EF%BC%852e%EF%BC%852e/insert",  # U+FF05 FULLWIDTH PERCENT SIGN: a new escape
        "/v1/leads/%EF%B9%92%EF%B9%92/insert",  # U+FE52 SMALL FULL STOP
        "/v1/leads/x%EF%BC%9Fauth_token=1",  # U+FF1F FULLWIDTH QUESTION MARK
    ],
)
async def test_characters_that_nfkc_turns_into_path_syntax_are_400(gateway, upstream, path):
    response = await gateway.get(f"{path}?auth_token={READER}")

    assert response.status == 400
    assert await response.json() == {"success": False, "error": "Malformed request"}
    assert upstream.received == []


async def test_other_non_ascii_paths_are_still_forwarded(gateway, upstream):
    response = await gateway.get(f"/v1/leads/caf%C3%A9/%E6%9D%B1%E4%BA%AC?auth_token={READER}")

    assert response.status == 200
    assert upstream.last().path == "/v1/leads/caf%C3%A9/%E6%9D%B1%E4%BA%AC"
