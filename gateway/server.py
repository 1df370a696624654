"""Processes: one worker (store, cache, upstream pool, access log, listener), or a master forking N of them.

Workers share the port through SO_REUSEPORT. SIGTERM stops accepting, lets in-flight requests finish, drains the
access log and exits 0; SIGHUP reloads routes and re-seeds tokens without dropping connections; SIGUSR1 reopens
the access-log file (for external rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web

from gateway import config as config_mod
from gateway.accesslog import AccessLog
from gateway.cache import TokenCache
from gateway.config import Config, ConfigError
from gateway.limits import Limiter
from gateway.limits_local import LocalLimiter
from gateway.limits_redis import RedisLimiter, lease_ttl_for
from gateway.protocol import GatewayServer, StartupRefused, require_c_parser
from gateway.proxy import Gateway
from gateway.store import Store
from gateway.token_service import TokenService
from gateway.upstream import UpstreamPool

log = logging.getLogger("gateway.server")

CHANGE_POLL = 0.25  # seconds between change-feed polls: a revoke reaches every worker well within 1 s
CHANGES_KEPT = 3600.0
LAST_USED_FLUSH = 5.0
QUICK_DEATH = 5.0  # seconds: a worker dying sooner after its start counts towards a crash loop
QUICK_DEATHS_ALLOWED = 3


def make_limiter(config: Config, clock: Callable[[], float]) -> Limiter:
    """The limits backend the config names: in this process ("local"), or shared through Redis."""
    limits = config.limits
    if limits.backend == "local":
        return LocalLimiter()
    return RedisLimiter(
        limits.backend,
        on_backend_error=limits.on_backend_error,
        key_prefix=limits.key_prefix,
        lease_ttl=lease_ttl_for(config.upstream.timeout),
        clock=clock,
    )


class StartupError(Exception):
    """The gateway cannot start (port taken, store unreadable); exit code 1."""


# Pending connections the kernel queues for a worker. aiohttp's SockSite would re-listen with 128, and a burst
# beyond that (a connection flood, 2,000 slowloris sockets) drops SYNs: legitimate clients then wait 1-3 s to connect.
BACKLOG = 2048


def listen_socket(host: str, port: int, *, reuse_port: bool, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


async def seed(config: Config) -> dict[str, int]:
    """Apply the config's [[tokens]] to the store; a failure leaves the store as it was (one transaction).

    A clash with the store (a name or secret a CLI-made token already has) is a config error, like in a worker.
    """
    try:
        store = await Store.open(config.store.database, config.store.busy_timeout)
    except Exception as e:
        raise StartupError(f"cannot open the store {config.store.database}: {e}") from None
    try:
        return await TokenService(store, config).seed()
    finally:
        await store.close()


class Worker:
    """One process's gateway. Also what tests start in-process, on port 0, with an injected clock."""

    def __init__(
        self,
        config: Config,
        *,
        sock: socket.socket | None = None,
        admin: bool = True,
        seeds: bool = True,
        clock: Callable[[], float] = time.time,
        worker_id: int = 0,
    ) -> None:
        self.config = config
        self._sock = sock
        self._serve_admin = admin
        self._seeds = seeds  # single-process mode seeds itself; under a master, the master does
        self.clock = clock
        self.worker_id = worker_id
        self.stopped = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()  # what stop() closes, filled by start()
        self.port = 0
        self.admin_port = 0

    async def start(self) -> None:
        """Open every resource next to the clean-up that closes it: a failure half-way (a port taken, an access
        log that cannot be written) closes what was opened, so the process exits instead of hanging on aiosqlite
        threads that were never closed."""
        try:
            require_c_parser()
        except StartupRefused as e:
            raise StartupError(str(e)) from None
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            self._stack = stack.pop_all()

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        # Closed last to first: listeners stop and in-flight requests finish before the log and stores close.
        cfg = self.config
        self.store = await _open_store(cfg)
        stack.push_async_callback(self.store.close)
        if self._seeds:
            await TokenService(self.store, cfg).seed()
        self.cache = TokenCache(
            self.store,
            size=cfg.cache.size,
            ttl=cfg.cache.ttl,
            negative_size=cfg.cache.negative_size,
            negative_ttl=cfg.cache.negative_ttl,
        )
        stack.push_async_callback(_cancel, await self.cache.start_following(CHANGE_POLL))
        # A second connection for the access log's batches and last-use writes, so that they never queue
        # token lookups behind them on one SQLite thread.
        self.log_store = await _open_store(cfg)
        stack.push_async_callback(self.log_store.close)
        self.access_log = AccessLog(cfg.access_log, self.log_store, clock=self.clock)
        try:
            await self.access_log.start()
        except OSError as e:
            raise StartupError(
                f"cannot open the access log {cfg.access_log.path}: {e.strerror or e}"
            ) from None
        stack.push_async_callback(self.access_log.close)
        stack.push_async_callback(self.flush_last_used)  # before the access log closes, after requests end
        self.upstream = UpstreamPool(
            cfg.upstream.url,
            connect_timeout=cfg.upstream.connect_timeout,
            read_timeout=cfg.upstream.timeout,
            max_connections=cfg.upstream.max_connections,
            pool_timeout=cfg.upstream.pool_timeout,
        )
        stack.push_async_callback(self.upstream.close)
        self.limiter = make_limiter(cfg, clock=self.clock)
        stack.push_async_callback(self.limiter.close)
        self.gateway = Gateway(
            cfg,
            cache=self.cache,
            upstream=self.upstream,
            access_log=self.access_log,
            limiter=self.limiter,
            clock=self.clock,
        )
        self.http_server = server = GatewayServer(
            self.gateway,
            cfg.server,
            # A client that leaves cancels its handler: its concurrency slot and upstream connection are given
            # back at once instead of when a slow upstream finally answers (proxy.Gateway.handle still logs it).
            handler_cancellation=True,
            auto_decompress=False,  # the gateway decides what to do with encoded bodies; see proxy._read_body
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=cfg.server.shutdown_grace)
        await runner.setup()
        # Stops listening, lets in-flight requests finish (up to shutdown_grace), closes idle connections.
        stack.push_async_callback(runner.cleanup)
        sock = self._sock or listen_socket(cfg.server.listen.host, cfg.server.listen.port, reuse_port=False)
        site = web.SockSite(runner, sock, backlog=BACKLOG)
        await site.start()
        self.port = sock.getsockname()[1]
        if self._serve_admin:
            await self._start_admin(stack)
        stack.push_async_callback(_cancel, asyncio.create_task(self._housekeeping(), name="housekeeping"))

    async def _start_admin(self, stack: contextlib.AsyncExitStack) -> None:
        from gateway.admin import admin_handler

        listen = self.config.admin.listen
        runner = web.ServerRunner(web.Server(admin_handler(self), access_log=None), handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        sock = listen_socket(listen.host, listen.port, reuse_port=False)
        await web.SockSite(runner, sock).start()
        self.admin_port = sock.getsockname()[1]

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(LAST_USED_FLUSH)
            await self.flush_last_used()
            ticks += 1
            if ticks % 12 == 0:
                with contextlib.suppress(Exception):
                    await self.store.prune_changes(time.time() - CHANGES_KEPT)

    async def flush_last_used(self) -> None:
        """Last use is written in batches, never once per request."""
        used, self.gateway.last_used = self.gateway.last_used, {}
        try:
            await self.log_store.record_last_used(used)
        except Exception as e:
            log.warning("cannot record last use of %d tokens: %s", len(used), e)
            for token_id, t in used.items():
                self.gateway.last_used[token_id] = max(t, self.gateway.last_used.get(token_id, 0.0))

    async def reload(self) -> None:
        """SIGHUP: re-read the config file; a broken file leaves everything as it was."""
        source = self.config.source
        try:
            new = config_mod.load(source)
            if self._seeds:
                await TokenService(self.store, new).seed()
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        except Exception as e:  # the store is unreachable: nothing was seeded, so nothing may change
            log.error("reload refused, keeping the running configuration: cannot seed tokens: %s", e)
            return
        self.config = new
        self.gateway.apply(new)
        self.http_server.apply(new.server)
        log.info("configuration reloaded from %s", source)

    async def stop(self) -> None:
        await self._stack.aclose()
        self.stopped.set()


async def _open_store(cfg: Config) -> Store:
    try:
        return await Store.open(cfg.store.database, cfg.store.busy_timeout)
    except Exception as e:
        raise StartupError(f"cannot open the store {cfg.store.database}: {e}") from None


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run_worker(config: Config, **kwargs: Any) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(config, **kwargs)
    await worker.start()
    # What start-up built lives as long as the worker: keeping it out of the collector's full passes spares the
    # event loop a ~15 ms stall every few seconds under load (the p99 latency showed them).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(worker.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, worker.access_log.reopen)
    log.info("worker %d serving on %s (pid %d)", worker.worker_id, config.server.listen, os.getpid())
    await stop.wait()
    log.info("worker %d stopping", worker.worker_id)
    await worker.stop()


def run_worker(config: Config, **kwargs: Any) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run_worker(config, **kwargs))


def serve(config: Config) -> int:
    """`gateway serve`: one process, or a master that forks and supervises N workers."""
    try:
        require_c_parser()  # before forking: a master would otherwise restart refusing workers for ever
    except StartupRefused as e:
        raise StartupError(str(e)) from None
    workers = config.server.workers or os.cpu_count() or 1
    if workers == 1:
        run_worker(config)
        return 0
    return Master(config, workers).run()


class Master:
    """Forks workers, forwards signals to them, re-seeds on SIGHUP, and replaces a worker that dies."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)

    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.count = workers
        self.children: dict[int, int] = {}  # pid -> worker id
        self.started: dict[int, float] = {}  # worker id -> when its current process was forked
        self.quick_deaths = 0
        self.stopping = False
        self.code = 0

    def run(self) -> int:
        asyncio.run(seed(self.config))
        # Checked here so that a taken port is one clear error, not N dying workers.
        listen_socket(self.config.server.listen.host, self.config.server.listen.port, reuse_port=True).close()
        admin = self.config.admin.listen
        listen_socket(admin.host, admin.port, reuse_port=False).close()
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        for worker_id in range(self.count):
            self._spawn(worker_id)
        while self.children:
            info = signal.sigtimedwait(self.SIGNALS, 1.0)
            if info is None:
                self._reap()
                continue
            sig = info.si_signo
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
                self._signal_all(signal.SIGTERM)
            elif sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGUSR1:
                self._signal_all(signal.SIGUSR1)
            self._reap()
        return self.code

    def _spawn(self, worker_id: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = worker_id
            self.started[worker_id] = time.monotonic()
            return
        code = 0
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            sock = listen_socket(
                self.config.server.listen.host, self.config.server.listen.port, reuse_port=True
            )
            run_worker(self.config, sock=sock, admin=worker_id == 0, seeds=False, worker_id=worker_id)
        except BaseException as e:
            print(f"gateway: worker {worker_id} failed: {e}", file=sys.stderr)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            worker_id = self.children.pop(pid, None)
            if worker_id is None or self.stopping:
                continue
            # A worker that dies right after starting will do so again: after a few in a row, stop, don't spin.
            quick = time.monotonic() - self.started.get(worker_id, 0.0) < QUICK_DEATH
            self.quick_deaths = self.quick_deaths + 1 if quick else 0
            if self.quick_deaths >= QUICK_DEATHS_ALLOWED:
                log.error("workers keep dying right after they start (last status %d); stopping", status)
                print(
                    "gateway: error: workers keep failing at start-up; see the lines above", file=sys.stderr
                )
                self.stopping = True
                self.code = 1
                self._signal_all(signal.SIGTERM)
                continue
            log.error("worker %d (pid %d) died with status %d; starting a new one", worker_id, pid, status)
            time.sleep(0.1)
            self._spawn(worker_id)

    def _reload(self) -> None:
        try:
            new = config_mod.load(self.config.source)
            asyncio.run(seed(new))
        except (ConfigError, StartupError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        self.config = new
        self._signal_all(signal.SIGHUP)
