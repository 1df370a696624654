"""The token service on a real SQLite store: the rules every surface shares, and the typed errors it raises."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.store import Store
from gateway.token_service import Changes, Invalid, NewToken, NotFound, Refused, TokenService
from gateway.vocabulary import digest_of
from tests.conftest import gateway_config

NOW = 1_900_000_000.0


@pytest.fixture
async def service(tmp_path) -> AsyncIterator[TokenService]:
    config = gateway_config(tmp_path, "http://127.0.0.1:9")
    store = await Store.open(config.store.database)
    service = TokenService(store, config, clock=lambda: NOW)
    await service.seed()
    yield service
    await store.close()


async def test_a_created_token_is_found_by_its_secret_and_never_shows_it_again(service):
    view, secret = await service.create(NewToken("reports-bot", ["leads:read"], expires=NOW + 86400))

    assert view.record.name == "reports-bot"
    assert (await service.store.lookup(digest_of(secret))).id == view.record.id
    assert secret not in str(await service.find("reports-bot"))


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (NewToken("tok_sneaky", ["leads:read"]), "name"),
        (NewToken("reader", ["leads:read"]), "name"),  # seeded from the config file
        (NewToken("x", []), "permissions"),
        (NewToken("x", ["nosuch:read"]), "permissions"),
        (NewToken("x", ["leads:read"], type="external"), "company"),
        (NewToken("x", ["leads:read"], company="Acme"), "company"),
        (
            NewToken("x", ["leads"], type="external", company="Acme"),
            "permissions",
        ),  # above the type's ceiling
        (NewToken("x", ["leads:read"], expires=NOW - 1), "expires"),
        (NewToken("x", ["leads:read"], not_before=NOW + 10, expires=NOW + 5), "expires"),
    ],
)
async def test_a_token_that_breaks_a_rule_is_invalid_naming_the_field(service, new, field):
    with pytest.raises(Invalid) as refused:
        await service.create(new)

    assert refused.value.field == field


async def test_a_taken_name_is_refused_by_the_store(service):
    await service.create(NewToken("dup", ["leads:read"]))

    with pytest.raises(Refused) as refused:
        await service.create(NewToken("dup", ["leads:read"]))
    assert refused.value.field == "name"


async def test_edits_follow_the_rules(service):
    await service.create(NewToken("e", ["leads:read"]))

    view = await service.edit("e", Changes(grant=["reports"], rename="e2"))
    assert view.record.permissions == {"leads:read", "reports"}
    assert view.record.name == "e2"
    with pytest.raises(Refused, match="does not hold"):
        await service.edit("e2", Changes(remove=["admin"]))
    with pytest.raises(Refused, match="no permission"):
        await service.edit("e2", Changes(remove=["leads:read", "reports"]))
    with pytest.raises(Invalid, match="nothing to change"):
        await service.edit("e2", Changes())
    with pytest.raises(NotFound):
        await service.edit("ghost", Changes(rename="x"))


async def test_seeded_tokens_are_the_config_files(service):
    for attempt in (
        service.edit("reader", Changes(grant=["reports"])),
        service.rotate("reader"),
        service.delete("reader"),
    ):
        with pytest.raises(Refused, match="seeded from the config file"):
            await attempt
    view, revoked = await service.revoke("reader")
    assert revoked and view.record.revoked_at == NOW
    assert (await service.revoke("reader"))[1] is False


async def test_rotation_gives_a_new_secret_and_a_grace_for_the_old(service):
    _, old = await service.create(NewToken("r", ["leads:read"]))

    view, new = await service.rotate("r", grace=3600)

    assert new != old
    assert view.previous_secret_until == NOW + 3600
    await service.revoke("r")
    with pytest.raises(Refused, match="revoked"):
        await service.rotate("r")
