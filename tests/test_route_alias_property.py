"""Properties of route aliases: another spelling of a route's path never escapes that route's permission."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.config import Route
from gateway.paths import normalise
from gateway.routes import Router, fold

SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)
PATH = st.lists(SEGMENT, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
METHODS = st.sampled_from([None, frozenset({"POST"}), frozenset({"GET"}), frozenset({"GET", "POST"})])


@st.composite
def routes(draw: st.DrawFn) -> list[Route]:
    table = []
    for index in range(draw(st.integers(1, 6))):
        table.append(
            Route(
                path=draw(PATH),
                prefix=draw(st.booleans()),
                methods=draw(METHODS),
                permission=f"s{index}",
                rate_limit=None,
                index=index,
            )
        )
    return table


@st.composite
def spelling(draw: st.DrawFn, path: str) -> str:
    """`path` as a loose upstream router would still read it."""
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in path)
    tail = draw(st.lists(st.sampled_from([".", "%20", "/", ".json", ".XML", "%2e"]), max_size=3))
    return cased + "".join(tail)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), table=routes(), method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_a_spelling_of_a_routes_path_is_decided_by_that_route_or_an_earlier_one(data, table, method):
    router = Router(table)
    target = data.draw(st.sampled_from(table))
    request = data.draw(spelling(target.path))
    assume("/." not in request.replace("%2e", "."))  # a dot segment: normalising makes it another path
    path, _ = normalise(request)

    for allow_unmatched in (True, False):
        decided = router.route(path, method, allow_unmatched=allow_unmatched)
        if decided is None:
            # Only deny mode may leave it unmatched, and then it is refused anyway.
            assert not allow_unmatched
            continue
        if decided is not target:
            # Another route took it: one listed earlier, or a literal match that is at least as specific.
            earlier = decided.index < target.index
            literal = router.match(path, method) is decided
            assert earlier or (literal and (not decided.prefix or target.prefix)), (request, decided, target)


@given(path=PATH, table=routes())
def test_a_routes_own_path_with_its_own_method_is_matched_as_before(path, table):
    router = Router(table)
    for route in table:
        method = sorted(route.methods)[0] if route.methods else "GET"
        literal = router.match(route.path, method)
        decided = router.route(route.path, method, allow_unmatched=False)
        assert decided is not None
        assert decided.index <= literal.index  # type: ignore[union-attr]


@given(path=PATH)
def test_folding_is_idempotent_and_ignores_case_and_tails(path):
    assert fold(fold(path)) == fold(path)
    assert fold(path.upper() + "/") == fold(path)
    assert fold(path + ".json") == fold(path)
