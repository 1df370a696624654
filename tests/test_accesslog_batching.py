"""The access log under load: records gather into batches, timestamps are formatted cheaply and exactly."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3

from gateway.accesslog import _IsoClock
from tests.conftest import READER, Running, wait_until


def by_datetime(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_timestamps_match_datetime_to_the_millisecond_across_second_boundaries() -> None:
    rng = random.Random(6)
    boundaries = [0.0, 1.0, 0.9999995, 0.0000005, 1767225599.9999996, 1767225599.999, 951782400.5]
    spread = [rng.uniform(0, 4e9) for _ in range(20_000)]
    # Records arrive in time order; the clock reuses the formatted second, so ordered runs matter most.
    ordered = sorted(1767225600 + rng.uniform(0, 3) for _ in range(5_000))
    for series in (boundaries, spread, ordered):
        iso = _IsoClock()
        for ts in series:
            assert iso(ts) == by_datetime(ts), ts


def test_a_clock_that_goes_back_is_still_formatted_right() -> None:
    iso = _IsoClock()
    assert iso(1767225601.25) == "2026-01-01T00:00:01.250Z"
    assert iso(1767225600.5) == "2026-01-01T00:00:00.500Z"
    assert iso(-1.5) == by_datetime(-1.5)


async def test_records_reach_the_file_and_the_store_in_batches_and_all_of_them_at_stop(
    gateway: Running,
) -> None:
    for i in range(40):
        r = await gateway.get(f"/v1/leads/search?auth_token={READER}&n={i}")
        assert r.status == 200
    await wait_until(lambda: len(gateway.log_lines()) == 40)
    database = gateway.worker.config.store.database

    def stored() -> int:
        with sqlite3.connect(database) as db:
            return db.execute("SELECT COUNT(*) FROM request_log WHERE outcome = 'allowed'").fetchone()[0]

    await wait_until(lambda: stored() == 40)
    for i in range(10):
        await gateway.get(f"/v1/leads/search?n={i}")
    await gateway.worker.stop()  # drains what is still gathering for the next batch
    assert len(gateway.log_lines()) == 50
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM request_log").fetchone()[0] == 50
