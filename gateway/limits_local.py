"""The local limits backend: counts held in this process's memory, so they are exact only with one worker.

Rate limits are sliding-window logs: the times of the last `count` admissions, kept in a ring. A request is admitted
only when the oldest of them has left the window, so no `period` ever holds more than `count` requests, wherever the
window is placed, while a burst of exactly `count` passes at once.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

from gateway.limits import Admission, Limiter, admitted, quota_window, refused
from gateway.vocabulary import Rate, Route, TokenRecord

SWEEP_EVERY = 60.0  # seconds of gateway clock between sweeps of counts nobody needs any more


class SlidingLog:
    """The admission times of the last `count` requests, oldest at `head` (8 bytes each, grown as they come)."""

    __slots__ = ("count", "head", "period", "stamps")

    def __init__(self, count: int, period: float) -> None:
        self.count = count
        self.period = period
        self.stamps = array("d")
        self.head = 0

    def wait(self, now: float) -> float:
        """Seconds until a request may be admitted; zero or less: it may be now."""
        if len(self.stamps) < self.count:
            return 0.0
        return self.stamps[self.head] + self.period - now

    def take(self, now: float) -> tuple[int, float]:
        """Count a request admitted at `now`; returns (remaining, seconds until the oldest counted one leaves)."""
        stamps = self.stamps
        count = self.count
        filled = len(stamps)
        if filled < count:
            stamps.append(now)
            filled += 1
            head = 0
        else:
            head = self.head
            stamps[head] = now
            head += 1
            if head == count:
                head = 0
            self.head = head
        cutoff = now - self.period
        # In admission order the ring is two sorted runs, [head, filled) then [0, head); the newest is inside.
        first = bisect_right(stamps, cutoff, head, filled)
        if first == filled and head:
            first = bisect_right(stamps, cutoff, 0, head)
            inside = head - first
        else:
            inside = filled - first + head
        return count - inside, stamps[first] + self.period - now

    def newest(self) -> float:
        return self.stamps[self.head - 1] if self.stamps else float("-inf")


class _Slot:
    """One request's concurrency slot; releasing twice frees it once."""

    __slots__ = ("held", "in_flight", "token_id")

    def __init__(self, in_flight: dict[str, int], token_id: str) -> None:
        self.in_flight = in_flight
        self.token_id = token_id
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            left = self.in_flight[self.token_id] - 1
            if left:
                self.in_flight[self.token_id] = left
            else:
                del self.in_flight[self.token_id]


class LocalLimiter(Limiter):
    def __init__(self) -> None:
        self._logs: dict[tuple[object, ...], SlidingLog] = {}
        self._quotas: dict[
            tuple[str, str], list[float]
        ] = {}  # (token id, "day"|"month") -> [window start, used]
        self._windows: dict[str, tuple[float, float]] = {}  # the current UTC day and month
        self.in_flight: dict[str, int] = {}  # token id -> requests holding a concurrency slot
        self._sweep_at = 0.0

    async def admit(self, token: TokenRecord, route: Route | None, now: float) -> Admission:
        return self.check(token, route, now)

    def check(self, token: TokenRecord, route: Route | None, now: float) -> Admission:
        """Every limit of this token (and route) is checked first; the request counts against them only if all admit."""
        if now >= self._sweep_at:
            self._sweep(now)
        wait = 0.0
        shown: int | None = None  # the refusing limit the 429's RateLimit-Limit names
        logs: list[SlidingLog] = []
        rate = token.rate_limit
        if rate is not None:
            log = self._log((token.id, rate.count, rate.period), rate)
            w = log.wait(now)
            if w > wait:
                wait, shown = w, rate.count
            logs.append(log)
        if route is not None and route.rate_limit is not None:
            rate = route.rate_limit
            key = (token.id, route.path, route.prefix, route.methods, rate.count, rate.period)
            log = self._log(key, rate)
            w = log.wait(now)
            if w > wait:
                wait, shown = w, rate.count
            logs.append(log)
        quota = token.quota
        used: list[float] = []  # [window start, requests counted in it]
        if quota is not None:
            start, end = self._window(quota.window, now)
            found = self._quotas.get((token.id, quota.window))
            if found is None or found[0] != start:
                found = self._quotas[(token.id, quota.window)] = [start, 0]
            used = found
            if used[1] >= quota.count and end - now > wait:
                wait, shown = end - now, quota.count
        concurrency = token.concurrency
        if concurrency is not None and self.in_flight.get(token.id, 0) >= concurrency and wait <= 0:
            wait = 1.0  # a slot frees when some request ends; there is no better estimate to give
        if wait > 0:
            return refused(wait, shown)

        best: tuple[int, int, float] | None = None  # (limit, remaining, reset) of the most restrictive
        for log in logs:
            remaining, reset = log.take(now)
            if best is None or remaining < best[1] or (remaining == best[1] and reset > best[2]):
                best = (log.count, remaining, reset)
        if quota is not None:
            used[1] += 1
            remaining = quota.count - int(used[1])
            if best is None or remaining < best[1] or (remaining == best[1] and end - now > best[2]):
                best = (quota.count, remaining, end - now)
        admission = Admission(None, admitted(*best) if best is not None else [])
        if concurrency is not None:
            self.in_flight[token.id] = self.in_flight.get(token.id, 0) + 1
            admission.release = _Slot(self.in_flight, token.id).release
        return admission

    def _log(self, key: tuple[object, ...], rate: Rate) -> SlidingLog:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = SlidingLog(rate.count, rate.period)
        return log

    def _window(self, window: str, now: float) -> tuple[float, float]:
        current = self._windows.get(window)
        if current is None or not current[0] <= now < current[1]:
            current = self._windows[window] = quota_window(window, now)
        return current

    def _sweep(self, now: float) -> None:
        """Forget logs whose every entry left its window and quotas of windows that ended: both count nothing."""
        self._sweep_at = now + SWEEP_EVERY
        for key in [k for k, log in self._logs.items() if log.newest() <= now - log.period]:
            del self._logs[key]
        for key in [k for k, (start, _) in self._quotas.items() if start < self._window(k[1], now)[0]]:
            del self._quotas[key]
