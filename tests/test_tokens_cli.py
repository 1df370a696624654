"""`gateway tokens ...` end to end through the real CLI entry point, against a temp store.

Exit codes: 0 ok; 2 for a bad argument (its form, or a rule of the config such as an unknown section or a type's
ceiling); 1 for what the store says (no such token, a duplicate name, a seeded token the CLI must not change).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import time
import zipfile

import openpyxl
import pytest

from gateway import config as config_mod
from gateway.cli_tokens import parse_when
from gateway.server import seed
from gateway.store import Store
from gateway.token_export import EXPORT_COLUMNS
from gateway.vocabulary import digest_of
from tests.cli_helpers import cli_config, gateway_cli, gateway_process

CONNECTOR_CEILING = """
[token_types.connector]
permissions = ["leads:read", "reports"]
"""


@pytest.fixture
def cfg(tmp_path):
    return str(cli_config(tmp_path, extra=CONNECTOR_CEILING))


def tokens(cfg, *args):
    return gateway_cli("tokens", *args, "--config", cfg)


def ok(result):
    assert result.code == 0, result.err
    return result


def usage_error(result, *names):
    """Exit 2, one line on stderr, naming the bad argument."""
    assert result.code == 2, (result.out, result.err)
    assert result.err.count("\n") == 1, result.err
    for name in names:
        assert name in result.err, result.err
    return result.err


def store_of(cfg_path):
    return config_mod.load(cfg_path, secrets=False).store.database


def in_store(cfg_path, fn):
    async def run():
        store = await Store.open(store_of(cfg_path))
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- create ------------------------------------------------------------------------------------------------------


def test_create_prints_the_secret_once_and_stores_only_its_digest(cfg):
    created = ok(tokens(cfg, "create", "reporting", "--permissions", "reports,leads:read", "--json")).json()
    secret = created["secret"]
    assert secret.startswith("gwt_") and len(secret) > 40
    assert created["name"] == "reporting" and created["id"].startswith("tok_")
    assert created["permissions"] == ["leads:read", "reports"]
    assert created["type"] == "developer" and created["status"] == "active" and created["source"] == "cli"
    found = in_store(cfg, lambda s: s.lookup(digest_of(secret)))
    assert found is not None and found.id == created["id"]
    shown = ok(tokens(cfg, "show", "reporting", "--json")).json()
    assert "secret" not in shown and secret not in str(shown)
    assert hashlib.sha256(secret.encode()).hexdigest() not in str(shown)


def test_create_human_output_shows_the_secret_on_its_own_line(cfg):
    out = ok(tokens(cfg, "create", "ops", "--all", "--type", "internal")).out
    assert "shown only this once" in out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("gwt_")
    assert in_store(cfg, lambda s: s.lookup(digest_of(secret))).permissions == frozenset({"*"})


def test_all_stores_star_and_limits_are_kept(cfg):
    created = ok(
        tokens(
            cfg,
            "create",
            "limited",
            "--all",
            "--rate-limit",
            "60/minute",
            "--quota",
            "10000/day",
            "--concurrency",
            "4",
            "--json",
        )
    ).json()
    assert created["permissions"] == ["*"]
    assert (created["rate_limit"], created["quota"], created["concurrency"]) == ("60/minute", "10000/day", 4)
    record = in_store(cfg, lambda s: s.get("limited"))
    assert record.rate_limit.count == 60 and record.rate_limit.period == 60.0
    assert record.quota.count == 10000 and record.quota.window == "day"
    assert record.concurrency == 4
    shown = ok(tokens(cfg, "show", "limited")).out
    assert "60/minute" in shown and "10000/day" in shown and "concurrency  4" in shown


def test_a_duplicate_name_is_refused_and_nothing_is_written(cfg):
    first = ok(tokens(cfg, "create", "dup", "-p", "leads:read", "--json")).json()
    seq = in_store(cfg, lambda s: s.change_seq())
    again = tokens(cfg, "create", "dup", "-p", "reports")
    assert again.code == 1 and "a token named 'dup' already exists" in again.err
    assert again.err.count("\n") == 1 and again.out == ""
    assert in_store(cfg, lambda s: s.change_seq()) == seq
    listed = ok(tokens(cfg, "list", "--json")).json()
    assert [t["id"] for t in listed["tokens"]] == [first["id"]]
    assert listed["tokens"][0]["permissions"] == ["leads:read"]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["-p", "bogus:read"], ["--permissions", "unknown section 'bogus'", "known sections: admin, cases"]),
        (["-p", "Leads"], ["--permissions", "lowercase"]),
        ([], ["--permissions", "--all"]),
        (["-p", "leads", "--all"], ["--all"]),
        (["--type", "robot", "-p", "leads"], ["--type"]),
        (["--type", "external", "-p", "cases:history"], ["--company"]),
        (["--type", "developer", "--company", "Acme", "-p", "leads"], ["--company"]),
        (["--type", "external", "--company", "Acme", "-p", "leads:read"], ["--permissions", "external"]),
        (["--type", "connector", "-p", "leads"], ["--permissions", "connector", "'leads' is outside"]),
        (["--type", "connector", "-p", "cases:history"], ["--permissions", "connector"]),
        (["-p", "leads", "--expires", "soon"], ["--expires", "ISO-8601"]),
        (["-p", "leads", "--expires", "2001-01-01"], ["--expires", "past"]),
        (["-p", "leads", "--not-before", "40d", "--expires", "30d"], ["--expires", "--not-before"]),
        (["-p", "leads", "--rate-limit", "5/fortnight"], ["--rate-limit"]),
        (["-p", "leads", "--quota", "10000/week"], ["--quota"]),
        (["-p", "leads", "--concurrency", "0"], ["--concurrency"]),
    ],
)
def test_create_refuses_bad_arguments_naming_them(cfg, args, names):
    usage_error(tokens(cfg, "create", "x", *args), *names)
    assert ok(tokens(cfg, "list", "--json")).json()["total"] == 0


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("tok_0123", "not a usable token name"),
        ("=HYPERLINK(1)", "not a usable token name"),
        (" padded", "not a usable token name"),
        ("bell\x07", "not a usable token name"),
        ("x" * 101, "not a usable token name"),
        ("reader", "declared in the config file"),  # a seeded name: seeding would clash with it
    ],
)
def test_create_refuses_unusable_names(cfg, name, why):
    usage_error(tokens(cfg, "create", name, "-p", "leads"), "NAME", why)


def test_type_ceilings_allow_what_they_allow(cfg):
    connector = ok(tokens(cfg, "create", "c1", "--type", "connector", "-p", "leads:read", "--json")).json()
    assert connector["type"] == "connector" and connector["company"] is None
    external = ok(
        tokens(
            cfg, "create", "acme", "--type", "external", "--company", "Acme", "-p", "cases:history", "--json"
        )
    ).json()
    assert (external["type"], external["company"]) == ("external", "Acme")
    internal = ok(tokens(cfg, "create", "ops", "--type", "internal", "--all", "--json")).json()
    assert internal["permissions"] == ["*"]
    # A connector may not hold "*" either: a ceiling is a ceiling.
    usage_error(tokens(cfg, "create", "c2", "--type", "connector", "--all"), "--permissions")


def test_when_accepts_iso_dates_times_and_durations():
    now = 1_700_000_000.0
    assert parse_when("2030-01-02", "--expires", now) == dt.datetime(2030, 1, 2, tzinfo=dt.UTC).timestamp()
    naive = dt.datetime(2031, 6, 1, 12, 30, tzinfo=dt.UTC).timestamp()
    assert parse_when("2031-06-01T12:30", "--expires", now) == naive  # naive = UTC
    assert parse_when("2031-06-01 12:30:00Z", "--expires", now) == naive
    assert parse_when("2031-06-01T14:30:00+02:00", "--expires", now) == naive
    assert parse_when("30d", "--expires", now) == now + 30 * 86400
    assert parse_when("12h", "--expires", now) == now + 12 * 3600
    assert parse_when("now", "--expires", now) == now
    assert parse_when("never", "--expires", now) is None


def test_create_takes_when_values(cfg):
    before = time.time()
    created = ok(
        tokens(
            cfg,
            "create",
            "w",
            "-p",
            "leads",
            "--not-before",
            "2030-01-02",
            "--expires",
            "2031-06-01T12:30",
            "--json",
        )
    ).json()
    assert created["not_before"] == "2030-01-02T00:00:00Z" and created["expires"] == "2031-06-01T12:30:00Z"
    assert created["status"] == "not_yet_active"
    relative_id = ok(tokens(cfg, "create", "r", "-p", "leads", "--expires", "30d", "--json")).json()["id"]
    relative = in_store(cfg, lambda s: s.get(relative_id))
    assert before + 30 * 86400 <= relative.expires <= time.time() + 30 * 86400


# --- list --------------------------------------------------------------------------------------------------------


def test_list_pages_in_creation_order_and_filters_by_status_in_sql(cfg):
    names = [f"t{i:02d}" for i in range(23)]
    for name in names:
        ok(tokens(cfg, "create", name, "-p", "leads:read"))
    first = ok(tokens(cfg, "list", "--json")).json()
    assert first["page_size"] == 10 and first["total"] == 23 and first["pages"] == 3
    assert [t["name"] for t in first["tokens"]] == names[:10]
    third = ok(tokens(cfg, "list", "--page", "3", "--json")).json()
    assert [t["name"] for t in third["tokens"]] == names[20:]
    big = ok(tokens(cfg, "list", "--page-size", "100", "--json")).json()
    assert [t["name"] for t in big["tokens"]] == names
    assert ok(tokens(cfg, "list", "--page", "9", "--json")).json()["tokens"] == []
    usage_error(tokens(cfg, "list", "--page-size", "9"), "--page-size")
    usage_error(tokens(cfg, "list", "--page-size", "101"), "--page-size")
    usage_error(tokens(cfg, "list", "--page", "0"), "--page")
    usage_error(tokens(cfg, "list", "--status", "gone"), "--status")

    ok(tokens(cfg, "revoke", "t01"))
    ok(tokens(cfg, "revoke", "t02"))
    ok(tokens(cfg, "edit", "t03", "--expires", "now"))
    ok(tokens(cfg, "edit", "t04", "--not-before", "30d"))

    def status(s):
        return [
            t["name"]
            for t in ok(tokens(cfg, "list", "--status", s, "--page-size", "100", "--json")).json()["tokens"]
        ]

    assert status("revoked") == ["t01", "t02"]
    assert status("expired") == ["t03"]
    assert status("not_yet_active") == ["t04"]
    assert status("active") == [n for n in names if n not in ("t01", "t02", "t03", "t04")]
    filtered = ok(tokens(cfg, "list", "--status", "active", "--page", "2", "--json")).json()
    assert filtered["total"] == 19 and [t["name"] for t in filtered["tokens"]] == status("active")[10:19]

    table = ok(tokens(cfg, "list")).out.splitlines()
    assert table[0].split() == [
        "ID",
        "NAME",
        "TYPE",
        "STATUS",
        "PERMISSIONS",
        "CREATED",
        "EXPIRES",
        "LAST",
        "USED",
    ]
    assert "t00" in table[1] and "t09" in table[10] and "1-10 of 23 (page 1 of 3)" in table[-1]
    assert "revoked" in table[2]


def test_list_of_an_empty_store(cfg):
    assert "No tokens." in ok(tokens(cfg, "list")).out
    assert "No revoked tokens." in ok(tokens(cfg, "list", "--status", "revoked")).out


# --- show --------------------------------------------------------------------------------------------------------


def test_show_prints_everything_but_the_secret_plus_last_use(cfg):
    created = ok(
        tokens(
            cfg,
            "create",
            "shown",
            "-p",
            "leads:read",
            "--expires",
            "2031-01-01",
            "--rate-limit",
            "5/second",
            "--json",
        )
    ).json()
    used_at = 1_900_000_000.0
    in_store(cfg, lambda s: s.record_last_used({created["id"]: used_at}))
    by_name = ok(tokens(cfg, "show", "shown", "--json")).json()
    by_id = ok(tokens(cfg, "show", created["id"], "--json")).json()
    assert by_name == by_id
    assert by_name["last_used_at"] == iso(used_at)
    assert by_name["expires"] == "2031-01-01T00:00:00Z"
    assert set(by_name) == {
        "id", "name", "type", "company", "permissions", "status", "source", "created_at", "updated_at",
        "not_before", "expires", "revoked_at", "revoked_by", "previous_secret_until", "rate_limit", "quota",
        "concurrency", "last_used_at",
    }  # fmt: skip
    human = ok(tokens(cfg, "show", "shown")).out
    assert f"last used    {iso(used_at)}" in human and "rate limit   5/second" in human
    assert created["secret"] not in human + str(by_name)


@pytest.mark.parametrize("command", ["show", "edit", "revoke", "rotate", "delete"])
def test_a_missing_token_is_exit_1_naming_it(cfg, command):
    extra = {"edit": ["--grant", "leads"], "delete": ["--yes"]}.get(command, [])
    result = tokens(cfg, command, "ghost", *extra)
    assert result.code == 1 and "no token named 'ghost'" in result.err and result.err.count("\n") == 1
    assert "no token with id 'tok_ffff'" in tokens(cfg, command, "tok_ffff", *extra).err


# --- edit --------------------------------------------------------------------------------------------------------


def test_edit_renames_grants_removes_and_changes_validity_and_limits(cfg):
    created = ok(tokens(cfg, "create", "e1", "-p", "leads:read,reports", "--quota", "5/day", "--json")).json()
    ok(tokens(cfg, "create", "e2", "-p", "leads:read"))
    edited = ok(
        tokens(
            cfg, "edit", "e1", "--rename", "e1-new", "--grant", "admin", "--grant", "cases:history",
            "--remove", "reports", "--expires", "2032-01-01", "--not-before", "2020-01-01",
            "--rate-limit", "10/second", "--concurrency", "2", "--json",
        )
    ).json()  # fmt: skip
    assert edited["id"] == created["id"] and edited["name"] == "e1-new"
    assert edited["permissions"] == ["admin", "cases:history", "leads:read"]
    assert (edited["not_before"], edited["expires"]) == ("2020-01-01T00:00:00Z", "2032-01-01T00:00:00Z")
    assert (edited["rate_limit"], edited["quota"], edited["concurrency"]) == ("10/second", "5/day", 2)
    cleared = ok(
        tokens(cfg, "edit", created["id"], "--rate-limit", "none", "--quota", "none", "--concurrency", "none",
               "--expires", "never", "--json")
    ).json()  # fmt: skip
    assert (cleared["rate_limit"], cleared["quota"], cleared["concurrency"], cleared["expires"]) == (
        None,
    ) * 4
    assert ok(tokens(cfg, "edit", "e1-new", "--all", "--json")).json()["permissions"] == ["*"]
    assert (
        "Updated token 'e1-new'" in ok(tokens(cfg, "edit", "e1-new", "--remove", "*", "--grant", "leads")).out
    )

    clash = tokens(cfg, "edit", "e1-new", "--rename", "e2")
    assert clash.code == 1 and "--rename" in clash.err and "'e2' already exists" in clash.err
    assert ok(tokens(cfg, "show", created["id"], "--json")).json()["name"] == "e1-new"


def test_edit_refuses_what_cannot_change(cfg):
    ok(tokens(cfg, "create", "fixed", "--type", "connector", "-p", "leads:read"))
    usage_error(tokens(cfg, "edit", "fixed", "--type", "internal"), "--type", "cannot change")
    usage_error(tokens(cfg, "edit", "fixed", "--company", "Acme"), "--company", "cannot change")
    usage_error(tokens(cfg, "edit", "fixed"), "nothing to change")
    usage_error(tokens(cfg, "edit", "fixed", "--grant", "bogus"), "--grant", "unknown section 'bogus'")
    usage_error(tokens(cfg, "edit", "fixed", "--grant", "admin"), "--grant", "connector")  # the ceiling
    usage_error(tokens(cfg, "edit", "fixed", "--all"), "--all", "connector")
    usage_error(tokens(cfg, "edit", "fixed", "--grant", "reports", "--remove", "reports"), "--remove")
    usage_error(tokens(cfg, "edit", "fixed", "--rename", "tok_x"), "--rename")
    usage_error(tokens(cfg, "edit", "fixed", "--rename", "reader"), "--rename", "declared in the config file")
    usage_error(tokens(cfg, "edit", "fixed", "--expires", "later"), "--expires")
    usage_error(
        tokens(cfg, "edit", "fixed", "--not-before", "2031-01-01", "--expires", "2030-01-01"), "--expires"
    )
    not_held = tokens(cfg, "edit", "fixed", "--remove", "reports")
    assert not_held.code == 1 and "does not hold 'reports'" in not_held.err
    emptied = tokens(cfg, "edit", "fixed", "--remove", "leads:read")
    assert emptied.code == 1 and "no permission" in emptied.err
    assert ok(tokens(cfg, "edit", "fixed", "--grant", "reports", "--json")).json()["permissions"] == [
        "leads:read",
        "reports",
    ]
    shown = ok(tokens(cfg, "show", "fixed", "--json")).json()
    assert (shown["type"], shown["company"]) == ("connector", None)


def test_seeded_tokens_are_changed_in_the_config_file_not_with_the_cli(cfg):
    asyncio.run(seed(config_mod.load(cfg)))
    for args in (
        ["edit", "reader", "--grant", "reports"],
        ["rotate", "reader"],
        ["delete", "reader", "--yes"],
    ):
        refused = tokens(cfg, *args)
        assert refused.code == 1 and "seeded from the config file" in refused.err, args
    # Revoking is an admin's call, and sticks (see test_seeding). Deleting it while the file still declares it
    # would let the next seeding bring it back, active: only once the file no longer declares it.
    ok(tokens(cfg, "revoke", "reader"))
    still_declared = tokens(cfg, "delete", "reader", "--yes")
    assert still_declared.code == 1 and "seeded from the config file" in still_declared.err
    undeclared = cfg.replace("gateway.toml", "undeclared.toml")
    with open(cfg) as f, open(undeclared, "w") as g:
        g.write(f.read().replace('name = "reader"', 'name = "reader-2"'))
    ok(tokens(undeclared, "delete", "reader", "--yes"))


# --- revoke, rotate, delete --------------------------------------------------------------------------------------


def test_revoke_keeps_the_record(cfg):
    created = ok(tokens(cfg, "create", "gone", "-p", "leads", "--json")).json()
    before = time.time()
    out = ok(tokens(cfg, "revoke", "gone")).out
    assert "Revoked token 'gone'" in out
    shown = ok(tokens(cfg, "show", "gone", "--json")).json()
    assert shown["status"] == "revoked" and shown["revoked_by"] == "admin"
    record = in_store(cfg, lambda s: s.lookup(digest_of(created["secret"])))
    assert record is not None and before - 1 <= record.revoked_at <= time.time()
    again = ok(tokens(cfg, "revoke", created["id"]))
    assert "already revoked" in again.out
    assert ok(tokens(cfg, "show", "gone", "--json")).json()["revoked_at"] == shown["revoked_at"]


def test_rotate_without_grace_retires_the_old_secret_at_once(cfg):
    created = ok(tokens(cfg, "create", "rot", "-p", "leads", "--json")).json()
    rotated = ok(tokens(cfg, "rotate", "rot", "--json")).json()
    assert rotated["secret"] != created["secret"] and rotated["previous_secret_until"] is None
    assert in_store(cfg, lambda s: s.lookup(digest_of(created["secret"]))) is None
    assert in_store(cfg, lambda s: s.lookup(digest_of(rotated["secret"]))).id == created["id"]
    human = ok(tokens(cfg, "rotate", "rot")).out
    assert "The old secret no longer works." in human and human.strip().splitlines()[-1].startswith("gwt_")


def test_rotate_with_grace_keeps_the_old_secret_until_the_grace_ends(cfg):
    created = ok(tokens(cfg, "create", "rot", "-p", "leads", "--json")).json()
    before = time.time()
    rotated = ok(tokens(cfg, "rotate", "rot", "--grace", "1h", "--json")).json()
    old = in_store(cfg, lambda s: s.lookup(digest_of(created["secret"])))
    assert old.id == created["id"] and before + 3600 <= old.secret_expires <= time.time() + 3600
    assert in_store(cfg, lambda s: s.lookup(digest_of(rotated["secret"]))).secret_expires is None
    assert (
        ok(tokens(cfg, "show", "rot", "--json")).json()["previous_secret_until"]
        == rotated["previous_secret_until"]
    )
    usage_error(tokens(cfg, "rotate", "rot", "--grace", "a while"), "--grace")
    ok(tokens(cfg, "revoke", "rot"))
    refused = tokens(cfg, "rotate", "rot")
    assert refused.code == 1 and "revoked" in refused.err


def test_delete_needs_yes(cfg):
    created = ok(tokens(cfg, "create", "doomed", "-p", "leads", "--json")).json()
    usage_error(tokens(cfg, "delete", "doomed"), "--yes")
    assert ok(tokens(cfg, "show", "doomed", "--json")).json()["id"] == created["id"]
    assert "Deleted token 'doomed'" in ok(tokens(cfg, "delete", "doomed", "--yes")).out
    assert tokens(cfg, "show", "doomed").code == 1
    assert in_store(cfg, lambda s: s.lookup(digest_of(created["secret"]))) is None


# --- export ------------------------------------------------------------------------------------------------------


def _export_fixture(cfg):
    """Tokens covering every column; returns what `list --json` says about them, and their secrets."""
    a = ok(
        tokens(cfg, "create", "alpha", "-p", "leads:read,reports", "--expires", "2031-01-01", "--json")
    ).json()
    b = ok(
        tokens(cfg, "create", "beta", "--type", "external", "--company", "Acme", "-p", "cases:history",
               "--not-before", "2030-06-01T08:00:00Z", "--json")
    ).json()  # fmt: skip
    c = ok(tokens(cfg, "create", "gamma", "--all", "--json")).json()
    ok(tokens(cfg, "revoke", "gamma"))
    in_store(cfg, lambda s: s.record_last_used({a["id"]: 1_800_000_000.0}))

    async def formula(store):  # names from a config file are not checked like the CLI's: the export must cope
        await store.create_token(
            name="=HYPERLINK(1)", digest=digest_of("f"), permissions=["leads"], source="seed"
        )

    in_store(cfg, formula)
    listed = ok(tokens(cfg, "list", "--page-size", "100", "--json")).json()["tokens"]
    return listed, [a["secret"], b["secret"], c["secret"]]


def _expected_rows(listed):
    def when(value):
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ") if value else None

    return [
        [
            t["id"], t["name"], t["type"], t["company"], ", ".join(t["permissions"]), t["status"],
            when(t["created_at"]), when(t["not_before"]), when(t["expires"]), when(t["last_used_at"]),
        ]
        for t in listed
    ]  # fmt: skip


def test_export_xlsx_has_typed_dates_a_bold_frozen_header_and_no_secret(cfg, tmp_path):
    listed, secrets = _export_fixture(cfg)
    path = tmp_path / "tokens.xlsx"
    out = ok(tokens(cfg, "export", "--format", "xlsx", "-o", str(path))).out
    assert "Exported 4 tokens" in out
    book = openpyxl.load_workbook(path)
    sheet = book.active
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert rows[0] == list(EXPORT_COLUMNS)
    assert rows[1:] == _expected_rows(listed)
    assert all(cell.font.bold for cell in sheet[1])
    assert sheet.freeze_panes == "A2"
    created = sheet.cell(row=2, column=EXPORT_COLUMNS.index("created") + 1)
    assert isinstance(created.value, dt.datetime) and created.is_date and "yyyy" in created.number_format
    last_used = sheet.cell(row=2, column=EXPORT_COLUMNS.index("last_used") + 1).value
    assert last_used == dt.datetime(2027, 1, 15, 8, 0)  # 1_800_000_000, UTC
    formula = sheet.cell(row=5, column=2)
    assert formula.value == "=HYPERLINK(1)" and formula.data_type == "s"
    raw = b"".join(zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist())
    for secret in secrets:
        assert secret.encode() not in raw and hashlib.sha256(secret.encode()).hexdigest().encode() not in raw


def test_export_csv_reads_back_and_has_no_secret(cfg, tmp_path):
    listed, secrets = _export_fixture(cfg)
    path = tmp_path / "tokens.csv"
    ok(tokens(cfg, "export", "-o", str(path)))  # the format follows the file's extension
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(EXPORT_COLUMNS)
    expected = [
        [
            "" if v is None else v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, dt.datetime) else v
            for v in row
        ]
        for row in _expected_rows(listed)
    ]
    expected[3][1] = "'=HYPERLINK(1)"  # a spreadsheet would run it as a formula
    assert rows[1:] == expected
    assert ok(tokens(cfg, "export", "--format", "csv", "-o", "-")).out == text
    for secret in secrets:
        assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() not in text


def test_export_argument_errors(cfg, tmp_path):
    usage_error(tokens(cfg, "export", "-o", str(tmp_path / "tokens.txt")), "--format")
    usage_error(tokens(cfg, "export", "--format", "xlsx", "-o", "-"), "--output")
    usage_error(tokens(cfg, "export", "--format", "pdf", "-o", "x.pdf"), "--format")
    failed = tokens(cfg, "export", "-o", str(tmp_path / "no" / "such" / "dir.csv"))
    assert failed.code == 1 and "--output" in failed.err
    assert not (tmp_path / "no").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written temp file


# --- every command ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["create", "list", "show", "edit", "revoke", "rotate", "delete", "export"]
)
def test_every_command_has_help_with_an_example_and_takes_config(command):
    result = gateway_cli("tokens", command, "--help")
    assert result.code == 0 and "Example" in result.out and f"gateway tokens {command}" in result.out
    assert "--config PATH" in result.out


def test_a_broken_config_is_exit_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cache]\nttl = "forever"\n')
    usage_error(gateway_cli("tokens", "list", "--config", str(bad)), "cache.ttl")
    missing = gateway_cli("tokens", "list", "--config", str(tmp_path / "nope.toml"))
    assert missing.code == 2 and "no such config file" in missing.err


def test_managing_tokens_needs_no_seeded_secrets_in_the_environment(tmp_path):
    extra = (
        '\n[[tokens]]\nname = "from-env"\nsecret_env = "GATEWAY_TEST_UNSET_SECRET"\npermissions = ["leads"]\n'
    )
    path = str(cli_config(tmp_path, extra=extra))
    ok(gateway_cli("tokens", "create", "mine", "-p", "leads", "--config", path))
    usage_error(gateway_cli("tokens", "create", "from-env", "-p", "leads", "--config", path), "declared")
    # `config check` and `serve` still insist on it.
    usage_error(gateway_cli("config", "check", "--config", path), "GATEWAY_TEST_UNSET_SECRET")


def test_python_m_gateway_tokens_end_to_end(cfg):
    created = gateway_process(
        "tokens", "create", "proc", "-p", "leads:read", "--json", "--config", cfg
    ).json()
    listed = gateway_process("tokens", "list", "--config", cfg)
    assert listed.code == 0 and created["id"] in listed.out
    bad = gateway_process("tokens", "list", "--page-size", "5", "--config", cfg)
    assert bad.code == 2 and bad.err.startswith("gateway: error: ") and bad.err.count("\n") == 1
    assert "--page-size" in bad.err
