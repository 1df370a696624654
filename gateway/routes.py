"""Routes: the API section a request belongs to, decided on the normalised path. First match wins."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import Route


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        # (exact path or None, prefix or None, methods, route), flattened once for a tight loop.
        self._table = tuple(
            (None if r.prefix else r.path, (r.path.rstrip("/") + "/") if r.prefix else None, r.methods, r)
            for r in self.routes
        )

    def match(self, path: str, method: str) -> Route | None:
        for exact, prefix, methods, route in self._table:
            if exact is not None:
                if path != exact:
                    continue
            elif not (path.startswith(prefix) or path == prefix[:-1]):
                continue
            if methods is None or method in methods:
                return route
        return None
