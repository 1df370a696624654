"""Configuration: TOML parsed once, at the edge, into frozen typed dataclasses.

Every error names the key that is wrong and how to fix it; the CLI turns ConfigError into exit code 2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.credentials import CredentialSpec
from gateway.errors import MalformedRequest
from gateway.paths import normalise as paths_normalise
from gateway.vocabulary import TOKEN_TYPES, Quota, Rate, Route, TokenSeed, digest_of, grants, section_of

# Re-exported: callers that read config for these keep working; the vocabulary module is their home.
__all__ = ["TOKEN_TYPES", "Quota", "Rate", "Route", "TokenSeed", "grants", "section_of"]

DEFAULT_PATH = "config/gateway.toml"
TOKEN_KEYS = (
    "name",
    "secret_env",
    "secret_sha256",
    "secret",
    "type",
    "company",
    "permissions",
    "not_before",
    "expires",
    "rate_limit",
    "quota",
    "concurrency",
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class ConfigError(Exception):
    """A configuration mistake, phrased for the operator who has to fix it."""


# --- value types -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: Listen = Listen("0.0.0.0", 8080)
    workers: int = 1
    max_body: int = 10 * 1024 * 1024
    unmatched: str = "deny"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_header_size: int = 8 * 1024
    max_headers: int = 100
    max_url: int = 8 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000
    shutdown_grace: float = 30.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Listen = Listen("127.0.0.1", 8081)
    token_env: str = "GATEWAY_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    database: Path = Path("data/gateway.db")
    busy_timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class CacheConfig:
    size: int = 10_000
    ttl: float = 30.0
    negative_size: int = 10_000
    negative_ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    path: str = "logs/access.jsonl"
    rotate: int | None = 100 * 1024 * 1024
    keep: int = 5
    retain: float | None = 30 * 86400.0
    queue: int = 10_000


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    backend: str = "local"
    on_backend_error: str = "deny"
    # Redis keys start with this: deployments (and test runs) sharing one Redis each pick their own.
    key_prefix: str = "gateway:limits:"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = "http://127.0.0.1:9000"
    timeout: float = 30.0
    connect_timeout: float = 5.0
    max_connections: int = 256
    pool_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreConfig = StoreConfig()
    cache: CacheConfig = CacheConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    limits: LimitsConfig = LimitsConfig()
    token_types: dict[str, frozenset[str]] = field(default_factory=dict)
    upstream: UpstreamConfig = UpstreamConfig()
    credentials: CredentialSpec = field(default_factory=CredentialSpec)
    routes: tuple[Route, ...] = ()
    tokens: tuple[TokenSeed, ...] = ()
    source: Path | None = None

    @property
    def sections(self) -> frozenset[str]:
        """The API sections the routes define; token permissions must name one of them (or "*")."""
        return frozenset(section_of(r.permission) for r in self.routes)


# --- scalar parsers ----------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB)?", re.IGNORECASE)
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_RATE = re.compile(r"(\d+)\s*/\s*(second|minute|hour)")
_RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_QUOTA = re.compile(r"(\d+)\s*/\s*(day|month)")
_ROUTE_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_PERMISSION = re.compile(r"\*|[a-z0-9][a-z0-9_.-]*(:[a-z0-9][a-z0-9_.-]*)?")


def parse_duration(value: Any, key: str = "duration") -> float:
    if isinstance(value, bool):
        raise ConfigError(f'{key}: expected a duration like "30s", "5m", "1h" or "7d", got {value!r}')
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    if isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ConfigError(f'{key}: expected a duration like "30s", "5m", "1h" or "7d", got {value!r}')


def parse_size(value: Any, key: str = "size") -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "B").upper()]
    raise ConfigError(f'{key}: expected a size like "10MB", "512KB" or a number of bytes, got {value!r}')


def parse_rate(value: Any, key: str = "rate_limit") -> Rate:
    if isinstance(value, str) and (m := _RATE.fullmatch(value.strip())) and int(m.group(1)) > 0:
        return Rate(int(m.group(1)), _RATE_UNITS[m.group(2)], f"{int(m.group(1))}/{m.group(2)}")
    raise ConfigError(f'{key}: expected a rate like "600/minute" (per second, minute or hour), got {value!r}')


def parse_quota(value: Any, key: str = "quota") -> Quota:
    if isinstance(value, str) and (m := _QUOTA.fullmatch(value.strip())) and int(m.group(1)) > 0:
        return Quota(int(m.group(1)), m.group(2), f"{int(m.group(1))}/{m.group(2)}")
    raise ConfigError(f'{key}: expected a quota like "10000/day" (per day or month), got {value!r}')


def parse_listen(value: Any, key: str) -> Listen:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and port.isdigit() and int(port) < 65536:
            return Listen(host.strip("[]") or "0.0.0.0", int(port))
    raise ConfigError(f'{key}: expected "host:port" such as "0.0.0.0:8080", got {value!r}')


def parse_permission(value: Any, key: str) -> str:
    if isinstance(value, str) and _PERMISSION.fullmatch(value):
        return value
    raise ConfigError(
        f'{key}: expected a permission like "leads", "leads:read" or "*" (lowercase section[:action]), got {value!r}'
    )


def parse_when(value: Any, key: str) -> float:
    """A TOML datetime (with an offset) or date, as a UTC timestamp."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigError(
                f"{key}: the datetime {value.isoformat()} needs a UTC offset, e.g. {value.isoformat()}Z"
            )
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    raise ConfigError(f"{key}: expected a TOML datetime like 2027-01-01T00:00:00Z, got {value!r}")


# --- table reader ------------------------------------------------------------------------------------------------


class _Table:
    """Reads one TOML table: each key is taken once with its parser; leftovers are unknown keys."""

    def __init__(self, raw: Any, name: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{name}: expected a table, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.name = name

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def take(self, k: str, parse: Callable[[Any, str], Any], default: Any = None) -> Any:
        if k not in self.raw:
            return default
        return parse(self.raw.pop(k), self.key(k))

    def has(self, k: str) -> bool:
        return k in self.raw

    def done(self, known: tuple[str, ...] = ()) -> None:
        if self.raw:
            extra = sorted(self.raw)[0]
            hint = f"; known keys: {', '.join(known)}" if known else ""
            raise ConfigError(f"{self.key(extra)}: unknown key{hint}")


def _int(lo: int, hi: int | None = None) -> Callable[[Any, str], int]:
    def parse(v: Any, key: str) -> int:
        if isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi):
            return v
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{key}: expected a whole number {bound}, got {v!r}")

    return parse


def _str(v: Any, key: str) -> str:
    if isinstance(v, str) and v:
        return v
    raise ConfigError(f"{key}: expected a non-empty string, got {v!r}")


def _bool(v: Any, key: str) -> bool:
    if isinstance(v, bool):
        return v
    raise ConfigError(f"{key}: expected true or false, got {v!r}")


def _choice(*options: str) -> Callable[[Any, str], str]:
    def parse(v: Any, key: str) -> str:
        if v in options:
            return str(v)
        raise ConfigError(f"{key}: expected one of {', '.join(repr(o) for o in options)}, got {v!r}")

    return parse


def _list(item: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple[Any, ...]]:
    def parse(v: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise ConfigError(f"{key}: expected a list, got {v!r}")
        return tuple(item(x, f"{key}[{i}]") for i, x in enumerate(v))

    return parse


def _cidr(v: Any, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(v, strict=False)
    except (ValueError, TypeError):
        raise ConfigError(f'{key}: expected a CIDR like "10.0.0.0/8", got {v!r}') from None


def _upstream_url(v: Any, key: str) -> str:
    if isinstance(v, str):
        parts = urlsplit(v)
        if parts.scheme == "http" and parts.hostname and parts.path in ("", "/") and not parts.query:
            return v.rstrip("/")
    raise ConfigError(f'{key}: expected an http URL without a path, like "http://127.0.0.1:9000", got {v!r}')


def _limits_backend(v: Any, key: str) -> str:
    if isinstance(v, str) and (v == "local" or v.startswith(("redis://", "rediss://", "unix://"))):
        return v
    raise ConfigError(f'{key}: expected "local" or a Redis URL like "redis://127.0.0.1:6379/0", got {v!r}')


def _nullable(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """Sizes and durations where "off" (or 0) disables the feature."""

    def wrapped(v: Any, key: str) -> Any:
        if v in ("off", "none", 0, False):
            return None
        return parse(v, key)

    return wrapped


# --- sections ----------------------------------------------------------------------------------------------------


def _path(v: Any, key: str) -> Path:
    return Path(_str(v, key))


# Each plain section: its dataclass and one parser per key. Defaults come from the dataclass.
SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any, str], Any]]]] = {
    "server": (
        ServerConfig,
        {
            "listen": parse_listen,
            "workers": _int(0, 256),
            "max_body": parse_size,
            "unmatched": _choice("deny", "allow-authenticated"),
            "trusted_proxies": _list(_cidr),
            "max_header_size": parse_size,
            "max_headers": _int(1),
            "max_url": parse_size,
            "header_timeout": parse_duration,
            "body_timeout": parse_duration,
            "keepalive_timeout": parse_duration,
            "max_connections": _int(1),
            "shutdown_grace": parse_duration,
        },
    ),
    "admin": (AdminConfig, {"listen": parse_listen, "token_env": _str}),
    "store": (StoreConfig, {"database": _path, "busy_timeout": parse_duration}),
    "cache": (
        CacheConfig,
        {"size": _int(1), "ttl": parse_duration, "negative_size": _int(1), "negative_ttl": parse_duration},
    ),
    "access_log": (
        AccessLogConfig,
        {
            "path": _str,
            "rotate": _nullable(parse_size),
            "keep": _int(0),
            "retain": _nullable(parse_duration),
            "queue": _int(1),
        },
    ),
    "limits": (
        LimitsConfig,
        {"backend": _limits_backend, "on_backend_error": _choice("deny", "allow"), "key_prefix": _str},
    ),
    "upstream": (
        UpstreamConfig,
        {
            "url": _upstream_url,
            "timeout": parse_duration,
            "connect_timeout": parse_duration,
            "max_connections": _int(1),
            "pool_timeout": parse_duration,
        },
    ),
    "credentials": (
        CredentialSpec,
        {"query_param": _nullable(_str), "body_field": _nullable(_str), "bearer": _bool, "forward": _bool},
    ),
}


def _section(name: str, raw: Any) -> Any:
    cls, parsers = SECTIONS[name]
    t = _Table(raw, name)
    values = {k: t.take(k, parse) for k, parse in parsers.items() if t.has(k)}
    t.done(tuple(parsers))
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _token_types(raw: Any) -> dict[str, frozenset[str]]:
    t = _Table(raw, "token_types")
    out: dict[str, frozenset[str]] = {}
    for name in list(t.raw):
        if name not in TOKEN_TYPES:
            raise ConfigError(
                f"token_types.{name}: unknown token type; known types: {', '.join(TOKEN_TYPES)}"
            )
        sub = _Table(t.raw.pop(name), f"token_types.{name}")
        out[name] = frozenset(sub.take("permissions", _list(parse_permission), ()))
        sub.done(("permissions",))
    return out


def _routes(raw: Any) -> tuple[Route, ...]:
    if not isinstance(raw, list):
        raise ConfigError("routes: expected [[routes]] tables")
    routes = []
    for i, entry in enumerate(raw):
        t = _Table(entry, f"routes[{i}]")
        path = t.take("path", _str)
        if path is None:
            raise ConfigError(f'routes[{i}].path: missing; every route needs a path like "/v1/leads/insert"')
        if not path.startswith("/"):
            raise ConfigError(f'routes[{i}].path: must start with "/", got {path!r}')
        prefix = path.endswith("/*")
        if "*" in (path[:-2] if prefix else path):
            raise ConfigError(f'routes[{i}].path: "*" is only allowed as a final "/*" prefix, got {path!r}')
        bare = path[:-2] or "/" if prefix else path
        # Requests are matched on their normalised path, where every other character stays percent-encoded:
        # a route written with one could be reached under a spelling it does not match.
        if not _ROUTE_PATH.fullmatch(bare):
            raise ConfigError(
                f'routes[{i}].path: only letters, digits, "-._~" and "/" are allowed (plus a final "/*"), got {path!r}'
            )
        try:
            normal = paths_normalise(bare)[0]
        except MalformedRequest:
            normal = None
        if normal != bare:
            raise ConfigError(
                f'routes[{i}].path: write it normalised (no "//", "." or ".." segments), got {path!r}'
            )
        if not t.has("permission"):
            raise ConfigError(
                f'routes[{i}].permission: missing; every route needs a permission like "leads:read"'
            )
        permission = t.take("permission", parse_permission)
        if permission == "*":
            raise ConfigError(f'routes[{i}].permission: a route needs a section, not "*"')

        def method(v: Any, key: str) -> str:
            if isinstance(v, str) and v.upper() in HTTP_METHODS:
                return v.upper()
            raise ConfigError(f'{key}: expected an HTTP method like "GET" or "POST", got {v!r}')

        methods = t.take("methods", _list(method))
        routes.append(
            Route(
                path=bare,
                prefix=prefix,
                methods=frozenset(methods) if methods else None,
                permission=permission,
                rate_limit=t.take("rate_limit", parse_rate),
                index=i,
            )
        )
        t.done(("path", "methods", "permission", "rate_limit"))
    return tuple(routes)


def _secret_digest(t: _Table, env: dict[str, str], secrets: bool = True) -> bytes:
    given = [k for k in ("secret_env", "secret_sha256", "secret") if t.has(k)]
    if len(given) != 1:
        raise ConfigError(
            f"{t.name}: give exactly one of secret_env, secret_sha256 or secret"
            + (f" (found {', '.join(given)})" if given else "")
        )
    kind = given[0]
    value = t.take(kind, _str)
    if kind == "secret_env":
        secret = env.get(value, "")
        if not secret and not secrets:
            return b""  # the caller never seeds (token administration needs only the names)
        if not secret:
            raise ConfigError(
                f"{t.key('secret_env')}: environment variable {value} is not set; export it first"
            )
        return digest_of(secret)
    if kind == "secret_sha256":
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ConfigError(f"{t.key('secret_sha256')}: expected 64 hex digits (the SHA-256 of the secret)")
        return bytes.fromhex(value)
    return digest_of(value)


def _token(raw: Any, name: str, env: dict[str, str], secrets: bool = True) -> TokenSeed:
    t = _Table(raw, name)
    token_name = t.take("name", _str)
    if token_name is None:
        raise ConfigError(f"{name}.name: missing; every seeded token needs a unique name")
    digest = _secret_digest(t, env, secrets)
    permissions = t.take("permissions", _list(parse_permission), None)
    if permissions is None:
        raise ConfigError(f'{name}.permissions: missing; list sections like ["leads:read"] or ["*"]')
    seed = TokenSeed(
        name=token_name,
        digest=digest,
        type=t.take("type", _choice(*TOKEN_TYPES), "developer"),
        company=t.take("company", _str),
        permissions=tuple(dict.fromkeys(permissions)),
        not_before=t.take("not_before", parse_when),
        expires=t.take("expires", parse_when),
        rate_limit=t.take("rate_limit", parse_rate),
        quota=t.take("quota", parse_quota),
        concurrency=t.take("concurrency", _int(1)),
    )
    t.done(TOKEN_KEYS)
    return seed


def check_token_permissions(
    *,
    key: str,
    type_: str,
    company: str | None,
    permissions: Sequence[str],
    sections: frozenset[str],
    token_types: dict[str, frozenset[str]],
) -> None:
    """The rules every token obeys, whether seeded or made with the CLI; raises ConfigError naming `key`."""
    for p in permissions:
        if p != "*" and section_of(p) not in sections:
            known = ", ".join(sorted(sections)) or "(none: no routes are configured)"
            raise ConfigError(f"{key}: unknown section {section_of(p)!r} in {p!r}; known sections: {known}")
    if type_ in ("connector", "external"):
        ceiling = token_types.get(type_, frozenset())
        for p in permissions:
            if not any(grants(c, p) for c in ceiling):
                allowed = ", ".join(sorted(ceiling)) or "nothing"
                raise ConfigError(
                    f"{key}: {type_} tokens may hold at most [token_types.{type_}] permissions ({allowed}); "
                    f"{p!r} is outside that"
                )
    if type_ == "external" and not company:
        raise ConfigError(f"{key}: external tokens need a company")
    if type_ != "external" and company:
        raise ConfigError(f"{key}: only external tokens carry a company")


# --- loading -----------------------------------------------------------------------------------------------------

TOP_LEVEL = (
    "server",
    "admin",
    "store",
    "cache",
    "access_log",
    "limits",
    "token_types",
    "upstream",
    "credentials",
    "routes",
    "tokens",
    "include",
)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; pass --config PATH or set GATEWAY_CONFIG") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def parse(
    raw: dict[str, Any],
    *,
    base: Path | None = None,
    env: dict[str, str] | None = None,
    secrets: bool = True,
) -> Config:
    """Build a Config from parsed TOML; `base` is the folder relative paths (store, access log, include) are
    relative to: the config file's. Without it they stay as written.

    With `secrets=False` a seeded token whose `secret_env` is unset gets an empty digest instead of an error: for
    commands that never seed, so that an operator's shell needs no seeded secrets to manage tokens.
    """
    env = dict(os.environ) if env is None else env
    t = _Table(raw, "")
    sections = {name: _section(name, t.raw.pop(name, {})) for name in SECTIONS}
    credentials = sections["credentials"]
    token_types = _token_types(t.raw.pop("token_types", {}))
    routes = _routes(t.raw.pop("routes", []))

    token_tables: list[tuple[str, Any]] = []
    raw_tokens = t.raw.pop("tokens", [])
    if not isinstance(raw_tokens, list):
        raise ConfigError("tokens: expected [[tokens]] tables")
    token_tables += [(f"tokens[{i}]", x) for i, x in enumerate(raw_tokens)]
    for i, inc in enumerate(t.take("include", _list(_str), ())):
        inc_path = (base or Path(".")) / inc
        inc_raw = _read_toml(inc_path)
        inc_tokens = inc_raw.pop("tokens", [])
        if inc_raw:
            raise ConfigError(
                f"include[{i}] ({inc}): {sorted(inc_raw)[0]}: unknown key; included files hold [[tokens]] only"
            )
        if not isinstance(inc_tokens, list):
            raise ConfigError(f"include[{i}] ({inc}): tokens: expected [[tokens]] tables")
        token_tables += [(f"{inc}: tokens[{j}]", x) for j, x in enumerate(inc_tokens)]
    t.done(TOP_LEVEL)

    if credentials.query_param is None and credentials.body_field is None and not credentials.bearer:
        raise ConfigError(
            "credentials: every credential place is disabled; enable query_param, body_field or bearer"
        )

    _check_listeners(sections["server"], sections["admin"])
    if base is not None:
        sections["store"], sections["access_log"] = _resolved(base, sections["store"], sections["access_log"])
    cfg = Config(**sections, token_types=token_types, routes=routes, tokens=())
    known_sections = cfg.sections
    seeds: list[TokenSeed] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for key, raw_token in token_tables:
        seed = _token(raw_token, key, env, secrets)
        if seed.name in names:
            raise ConfigError(f"{key}.name: duplicate token name {seed.name!r}")
        if seed.digest and seed.digest in digests:
            raise ConfigError(f"{key}: the same secret is already used by another seeded token")
        check_token_permissions(
            key=f"{key}.permissions",
            type_=seed.type,
            company=seed.company,
            permissions=seed.permissions,
            sections=known_sections,
            token_types=token_types,
        )
        names.add(seed.name)
        digests.add(seed.digest)
        seeds.append(seed)
    return dataclasses.replace(cfg, tokens=tuple(seeds))


_ANY_HOST = frozenset({"", "0.0.0.0", "::", "*"})


def _check_listeners(server: ServerConfig, admin: AdminConfig) -> None:
    """The admin API must never share the proxy's port: the proxy port serves only the guarded API."""
    proxy, control = server.listen, admin.listen
    if proxy.port == 0 or proxy.port != control.port:
        return  # port 0 asks for any free port, so two of them never clash
    if proxy.host == control.host or proxy.host in _ANY_HOST or control.host in _ANY_HOST:
        raise ConfigError(
            f'admin.listen: "{control}" clashes with server.listen "{proxy}"; give the admin API a port of its '
            f'own, e.g. "127.0.0.1:{proxy.port + 1}"'
        )


def _resolved(
    base: Path, store: StoreConfig, access_log: AccessLogConfig
) -> tuple[StoreConfig, AccessLogConfig]:
    """Relative paths are relative to the config file's folder, never to the working directory: the CLI run from
    elsewhere with --config must open the very store the running gateway serves, not create an empty one."""
    if not store.database.is_absolute():
        store = dataclasses.replace(store, database=Path(os.path.normpath(base / store.database)))
    log_path = Path(access_log.path)
    if access_log.path != "-" and not log_path.is_absolute():
        access_log = dataclasses.replace(access_log, path=os.path.normpath(base / log_path))
    return store, access_log


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path or os.environ.get("GATEWAY_CONFIG") or DEFAULT_PATH)


def load(
    path: str | os.PathLike[str] | None = None, *, env: dict[str, str] | None = None, secrets: bool = True
) -> Config:
    p = resolve_path(path)
    raw = _read_toml(p)
    return dataclasses.replace(parse(raw, base=p.absolute().parent, env=env, secrets=secrets), source=p)
