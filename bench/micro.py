"""Micro-benchmarks of the pure steps (timeit, µs per call) and the uncached store lookup on 1,000,000 tokens."""

from __future__ import annotations

import hashlib
import random
import statistics
import time
import timeit
from pathlib import Path
from typing import Any

from gateway import config as config_mod
from gateway import paths, policy
from gateway.credentials import CredentialSpec, find
from gateway.errors import REFUSALS
from gateway.routes import Router
from gateway.store import Store
from gateway.vocabulary import TokenRecord, digest_of

TOKEN = "bench-token-0001"
TARGET = f"/v1/leads/search?list_id=5&auth_token={TOKEN}&fields=name,phone"
ROUTES = """
[[routes]]
path = "/v1/leads/insert"
methods = ["POST"]
permission = "leads:create"
[[routes]]
path = "/v1/leads/update"
methods = ["POST"]
permission = "leads:update"
[[routes]]
path = "/v1/reports/*"
permission = "reports"
[[routes]]
path = "/v1/leads/*"
permission = "leads:read"
"""


def _per_call_us(fn: Any, number: int) -> float:
    # Best of five: the least disturbed measure of what the code itself costs.
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def pure_steps() -> dict[str, float]:
    import tomllib

    cfg = config_mod.parse(tomllib.loads(ROUTES), base=Path("."))
    router = Router(cfg.routes)
    spec = CredentialSpec()
    token = TokenRecord(
        id="tok_bench",
        name="bench",
        type="developer",
        company=None,
        permissions=frozenset({"reports", "leads:read"}),
        not_before=None,
        expires=None,
        revoked_at=None,
        created_at=0.0,
    )
    path, query = paths.normalise(TARGET)
    route = router.match(path, "GET")
    now = time.time()

    def extract() -> None:
        find(spec, query, [], None, None)

    def extract_bearer() -> None:
        find(spec, "list_id=5", [f"Bearer {TOKEN}"], None, None)

    def normalise_match() -> None:
        p, _ = paths.normalise(TARGET)
        router.match(p, "GET")

    def decide() -> None:
        policy.decide(credential=TOKEN, token=token, route=route, allow_unmatched=False, now=now)

    def digest() -> None:
        digest_of(TOKEN)

    def render_refusal() -> None:
        # What the pipeline does for a refusal: the headers and the response object the server writes.
        from aiohttp import web

        from gateway.proxy import _refusal_headers

        refusal = REFUSALS["invalid"]
        web.Response(
            status=refusal.status, body=refusal.body, headers=_refusal_headers(refusal, "0123456789ab01")
        )

    def together() -> None:
        p, q = paths.normalise(TARGET)
        r = router.match(p, "GET")
        found = find(spec, q, [], None, None)
        policy.decide(credential=found.token, token=token, route=r, allow_unmatched=False, now=now)

    n = 20000
    out = {
        "credential_extraction_query_us": _per_call_us(extract, n),
        "credential_extraction_bearer_us": _per_call_us(extract_bearer, n),
        "normalise_and_route_match_us": _per_call_us(normalise_match, n),
        "decision_us": _per_call_us(decide, n),
        "token_digest_sha256_us": _per_call_us(digest, n),
        "pure_steps_together_us": _per_call_us(together, n),
    }
    out["error_rendering_us"] = _per_call_us(render_refusal, n)
    return out


async def _store_lookups(database: Path, count: int) -> dict[str, float]:
    from bench.store1m import TOKENS, secret

    store = await Store.open(database)
    rng = random.Random(11)
    # Half known tokens, half unknown ones: both are one indexed query.
    digests = [
        digest_of(secret(rng.randrange(TOKENS))) if i % 2 == 0 else hashlib.sha256(rng.randbytes(16)).digest()
        for i in range(count)
    ]
    await store.lookup(digests[0])
    times = []
    for d in digests:
        started = time.perf_counter()
        await store.lookup(d)
        times.append(time.perf_counter() - started)
    await store.close()
    times.sort()
    return {
        "lookups": count,
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(count * 0.99)] * 1000,
        "max_ms": times[-1] * 1000,
    }


def store_lookup(database: Path, count: int = 5000) -> dict[str, float]:
    import uvloop

    return uvloop.run(_store_lookups(database, count))
