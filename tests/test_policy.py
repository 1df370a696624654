"""The decision is a pure function of (credential, token record, route, now): tested without a server."""

from __future__ import annotations

import pytest

from gateway.config import Route
from gateway.errors import REFUSALS
from gateway.policy import decide
from gateway.vocabulary import TokenRecord

ROUTE = Route(
    path="/v1/leads/insert", prefix=False, methods=None, permission="leads:create", rate_limit=None, index=0
)


def token(**kw) -> TokenRecord:
    fields = {
        "id": "tok_1",
        "name": "t",
        "type": "developer",
        "company": None,
        "permissions": frozenset({"leads:create"}),
        "not_before": None,
        "expires": None,
        "revoked_at": None,
        "created_at": 0.0,
    }
    fields.update(kw)
    return TokenRecord(**fields)


def outcome(credential="s", record=None, route=ROUTE, allow_unmatched=False, now=100.0):
    refusal = decide(
        credential=credential, token=record, route=route, allow_unmatched=allow_unmatched, now=now
    )
    return "allowed" if refusal is None else refusal.outcome


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"credential": None}, "missing"),
        ({"credential": ""}, "missing"),
        ({"record": None}, "invalid"),
        ({"record": token(revoked_at=50.0)}, "revoked"),
        ({"record": token(not_before=101.0)}, "not_yet_active"),
        ({"record": token(not_before=100.0)}, "allowed"),
        ({"record": token(expires=100.0)}, "expired"),
        ({"record": token(expires=100.1)}, "allowed"),
        ({"record": token(secret_expires=100.0)}, "expired"),
        ({"record": token(secret_expires=200.0)}, "allowed"),
        ({"record": token(permissions=frozenset({"leads:read"}))}, "forbidden"),
        ({"record": token(permissions=frozenset({"leads"}))}, "allowed"),
        ({"record": token(permissions=frozenset({"*"}))}, "allowed"),
        ({"record": token(), "route": None}, "forbidden"),
        ({"record": token(), "route": None, "allow_unmatched": True}, "allowed"),
        ({"record": token(revoked_at=50.0), "route": None}, "revoked"),
    ],
)
def test_decide(kwargs, expected):
    assert outcome(**kwargs) == expected


def test_every_refusal_comes_from_the_one_table():
    for name in ("missing", "invalid", "revoked", "expired", "not_yet_active", "forbidden"):
        refusal = decide(
            credential=None if name == "missing" else "s",
            token=None
            if name in ("missing", "invalid")
            else {
                "revoked": token(revoked_at=1.0),
                "expired": token(expires=1.0),
                "not_yet_active": token(not_before=1e12),
                "forbidden": token(permissions=frozenset()),
            }[name],
            route=ROUTE,
            allow_unmatched=False,
            now=100.0,
        )
        assert refusal is REFUSALS[name]
