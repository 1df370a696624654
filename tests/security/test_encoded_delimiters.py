"""The lead's own attack class for issue 10: URL delimiters hidden behind percent-encoding in the path.

An upstream that decodes the request-target before splitting it (hand-written PHP front controllers doing
`explode('?', urldecode($_SERVER['REQUEST_URI']))`, servers that decode and then strip `;` path parameters) reads
`/v1/leads/insert%3Fauth_token=B` as the path `/v1/leads/insert` with a query carrying a credential the gateway never
decided on, while the gateway matched the prefix route `/v1/leads/*` (leads:read) on the encoded path. `%3F` (`?`),
`%23` (`#`) and `%3B` (`;`) in a path are refused, as their literal `;`, `#` and an extra `?` already are.
"""

from __future__ import annotations

import pytest

from tests.conftest import CREATOR, READER, wait_until


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/leads/insert%3Fauth_token={CREATOR}",
        f"/v1/leads/insert%3fauth_token={CREATOR}",
        "/v1/leads/insert%23fragment",
        "/v1/leads/insert%3Bjsessionid=x",
        "/v1/leads/search%3b/../insert",
    ],
)
async def test_an_encoded_query_fragment_or_parameter_delimiter_in_the_path_is_400(gateway, upstream, path):
    response = await gateway.post(f"{path}?auth_token={READER}")

    assert response.status == 400
    assert await response.json() == {"success": False, "error": "Malformed request"}
    assert upstream.received == []
    [record] = await wait_until(gateway.log_lines)
    assert record["outcome"] == "malformed"
    assert CREATOR not in str(record)


async def test_other_escapes_in_a_path_are_still_forwarded_encoded(gateway, upstream):
    response = await gateway.get(f"/v1/leads/a%20b%2Cc?auth_token={READER}")

    assert response.status == 200
    assert upstream.last().path == "/v1/leads/a%20b%2Cc"
