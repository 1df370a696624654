"""Routes: the API section a request belongs to, decided on the normalised path. First match wins."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.vocabulary import Route


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        # (exact path or None, prefix or None, methods, route), flattened once for a tight loop.
        self._table = tuple(
            (None if r.prefix else r.path, (r.path.rstrip("/") + "/") if r.prefix else None, r.methods, r)
            for r in self.routes
        )
        # (folded path, is a prefix, route): what `alias` compares a folded request path with.
        self._folded = tuple((fold(r.path), r.prefix, r) for r in self.routes)
        # Route position -> the earlier routes another spelling of which can match it literally; only matches
        # with such routes pay for folding the path.
        folded = self._folded
        overlaps = [[j for j in range(i) if _may_overlap(folded[j], folded[i])] for i in range(len(folded))]
        self._shadowed = tuple(bool(earlier) for earlier in overlaps)
        # A cheap first test for the common shadowed match (`GET /v1/leads/search` under `/v1/leads/*`, after the
        # exact `/v1/leads/insert`): a path can only be another spelling of an earlier exact route if its last
        # segment starts like that route's. Earlier prefix routes can take over only a literal prefix match.
        self._stems = tuple(
            frozenset(_stem(folded[j][0]) for j in earlier if not folded[j][1]) for earlier in overlaps
        )
        self._prefix_shadow = tuple(
            self.routes[i].prefix and any(folded[j][1] for j in earlier) for i, earlier in enumerate(overlaps)
        )
        self._position = {id(r): i for i, r in enumerate(self.routes)}

    def route(self, path: str, method: str, *, allow_unmatched: bool) -> Route | None:
        """The route a request is decided on: the first literal match, unless the path is another spelling of an
        earlier route (then that one), and under allow-authenticated an unmatched alias's route."""
        literal = self.match(path, method)
        if literal is None:
            # Under deny an unmatched request is refused whatever it aliases.
            return self.alias(path) if allow_unmatched else None
        position = self._position[id(literal)]
        if not self._shadowed[position]:
            return literal
        if not self._prefix_shadow[position]:
            stem = _stem(path)
            if stem and stem not in self._stems[position]:
                return literal
        # `PUT /v1/leads/insert` or `POST /v1/leads/INSERT` must not pass as the broader `/v1/leads/*` read route
        # listed after the insert route: the upstream runs insert for them.
        # An earlier prefix route never outranks a literal exact match: [GET /admin/*, POST /admin/users] splits
        # one path by method on purpose.
        alias = self.alias(path)
        if (
            alias is not None
            and self._position[id(alias)] < position
            and not (alias.prefix and not literal.prefix)
        ):
            return alias
        return literal

    def match(self, path: str, method: str) -> Route | None:
        for exact, prefix, methods, route in self._table:
            if exact is not None:
                if path != exact:
                    continue
            elif prefix is None or not (path.startswith(prefix) or path == prefix[:-1]):
                continue
            if methods is None or method in methods:
                return route
        return None

    def alias(self, path: str) -> Route | None:
        """The route an unmatched path is another spelling of, whatever the method; None when it is none's.

        Upstream frameworks route more loosely than we match: Express ignores letter case and a trailing `/`,
        Rails and old Spring take `/insert.json` for `/insert`, IIS drops trailing dots and spaces in every
        segment. Under `unmatched = "allow-authenticated"` such a spelling, or a method the route does not list,
        must not slip past the route's permission as "unmatched": the request is the route's. Only asked when
        `match` found nothing, so a matched request pays nothing for it.
        """
        folded = fold(path)
        for route_path, prefix, route in self._folded:
            if folded == route_path or (prefix and folded.startswith(route_path.rstrip("/") + "/")):
                return route
        return None


def _may_overlap(earlier: tuple[str, bool, Route], later: tuple[str, bool, Route]) -> bool:
    """Whether some path can match `later` literally while folding onto `earlier` (conservative)."""
    a, a_prefix, _ = earlier
    b, b_prefix, _ = later
    if a == b:
        return True
    under_a = a_prefix and b.startswith(a.rstrip("/") + "/")
    under_b = b_prefix and a.startswith(b.rstrip("/") + "/")
    return under_a or under_b


def _stem(path: str) -> str:
    """The last segment, lowercased, up to its first `.` or `%`: equal for two paths that fold alike ("" when the
    segment is all dots and escapes, which folding may remove altogether)."""
    last = path.rstrip("/").rpartition("/")[2].lower()
    for mark in (".", "%"):
        cut = last.find(mark)
        if cut >= 0:
            last = last[:cut]
    return last


# A final `.ext` (Rails formats, Spring's suffix patterns), and what IIS and Windows strip from a segment's end.
_EXTENSION = re.compile(r"\.[a-z0-9]{1,16}$")
_TRAILING = re.compile(r"(?:\.|%20)+$")


def fold(path: str) -> str:
    """`path` as the loosest common router reads it: lower case, no empty segments, no trailing dots or encoded
    spaces in any segment, no `.ext` suffixes on the last one. Two paths that fold alike may reach one handler."""
    segments = [_TRAILING.sub("", s) for s in path.lower().split("/")]
    kept = [s for s in segments if s]
    while kept:
        last = _TRAILING.sub("", _EXTENSION.sub("", kept[-1]))
        if last == kept[-1]:
            break
        if last:
            kept[-1] = last
        else:
            kept.pop()
    return "/" + "/".join(kept)
