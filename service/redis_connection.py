"""The Redis client for `REDIS_URL`: one server, a Cluster, or a primary found through Sentinel.

Every form gets the same fail-fast client (short timeouts, no retries): the
shared state handles an outage itself, by carrying on with its local view
and reconnecting in the background (`service/redis_state.py`). That is also
how a Sentinel failover is followed: the connections to the dead primary
fail, the state logs "Redis lost" once, and each reconnect asks the
Sentinels for the primary again (redis-py's `SentinelConnectionPool`) until
they have promoted a replica; then it logs "Redis is back" once and
reconciles as after any outage.

The URL forms, all of them redis-py's own except the Sentinel one, which
redis-py has no URL for; this is the form of the `Redis-Sentinel-Url` package
that other Python clients (Prefect's, docket's) read too:

    redis://[[user]:password@]host[:port][/db]       one server, or a Cluster node
    rediss://...?ssl_ca_certs=/path/ca.pem            the same over TLS
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?options]
    rediss+sentinel://...                             TLS to the primary and to the Sentinels

Sentinels listen on port 26379 unless a port is given. The credentials and
options (`ssl_ca_certs`, say) are the primary's; `sentinel_username` and
`sentinel_password` are the Sentinels' own, when they ask for one. On a
`rediss+sentinel` URL, the `ssl_*` options apply to the Sentinels too.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff

from service.redis_state import REDIS_TIMEOUT

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
# Options of the Sentinels' own connections, not the primary's.
SENTINEL_ONLY = ("sentinel_username", "sentinel_password")
# Options that name files: a missing one is said at start-up, by name, rather than
# as redis-py's "Error 2 connecting to host:port. No such file or directory."
FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def fail_fast() -> dict[str, Any]:
    """Short timeouts and no retries: the outage handling is the shared state's."""
    return {
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in SENTINEL_SCHEMES


def check_files(url: str) -> None:
    """Raises ValueError naming the first file option of `url` that is not a readable file."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name in FILE_OPTIONS and not Path(value).is_file():
            raise ValueError(f"{name}={value} is not a file")


def tls_failure(error: BaseException) -> str | None:
    """What a failed TLS handshake says, if `error` comes from one (redis-py wraps it in a
    ConnectionError whose text says "connecting to", as if the host were unreachable)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return (
                f"the TLS handshake failed ({cause.reason or cause}): is ssl_ca_certs the authority"
                " that signed the server's certificate?"
            )
        cause = cause.__cause__ or cause.__context__
    return None


@dataclass(frozen=True)
class SentinelAddress:
    """A `redis+sentinel://` URL, parsed: where the Sentinels are and what to ask them for."""

    sentinels: list[tuple[str, int]]
    service_name: str
    primary_options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> SentinelAddress:
        """Raises ValueError with what is wrong, in words fit for a start-up line."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SENTINEL_SCHEMES:
            raise ValueError(f"the scheme is not one of {', '.join(SENTINEL_SCHEMES)}")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        sentinels = [_host_and_port(host) for host in hosts.split(",")]
        path = [segment for segment in parts.path.split("/") if segment]
        if not path:
            raise ValueError("no service name: add it as the path, e.g. /mymaster")
        if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError("the path must be /service_name or /service_name/db")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        sentinel_only = {
            name.removeprefix("sentinel_"): query.pop(name) for name in SENTINEL_ONLY if name in query
        }
        # redis-py's own parser reads the primary's options (db, credentials, ssl_*,
        # timeouts), with its checks and conversions, from a URL of its own form.
        tls = scheme == "rediss+sentinel"
        plain = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}sentinel"
        plain += f"/{path[1] if len(path) == 2 else 0}?{urlencode(query)}"
        # Its connection class is left out: the Sentinel pool picks its own, which
        # asks the Sentinels for the primary on every new connection.
        primary = {k: v for k, v in parse_url(plain).items() if k not in ("host", "port", "connection_class")}
        sentinel_options: dict[str, Any] = dict(sentinel_only)
        if tls:
            primary["ssl"] = True
            sentinel_options.update({k: v for k, v in primary.items() if k.startswith("ssl")})
        return cls(sentinels, path[0], primary, sentinel_options)


def _host_and_port(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon:
        host, port = address, str(SENTINEL_PORT)
    if not host:
        raise ValueError(f"no host in the Sentinel address {address!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port of the Sentinel address {address!r} is not 1-65535")
    return host, int(port)


def single_server(url: str) -> Redis:
    """A client of the one server at `url`, without a round trip (tests build fleets on it)."""
    return Redis.from_url(url, **fail_fast())


async def connect(url: str) -> Redis | RedisCluster:
    """The client for `url`, with a first round trip made: a Redis that is not there, a
    wrong certificate or a Sentinel that knows no such primary raises here, at start-up.

    Raises `redis.RedisError` or `OSError`; the caller turns them into one line."""
    if is_sentinel_url(url):
        return await _connect_sentinel(SentinelAddress.parse(url))
    client = single_server(url)
    try:
        info = await client.info("cluster")
    except BaseException:
        await client.aclose()
        raise
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    cluster = RedisCluster.from_url(url, **fail_fast())
    await cluster.initialize()
    return cluster


async def _connect_sentinel(address: SentinelAddress) -> Redis:
    options = fail_fast()
    sentinel_options = {**fail_fast(), **address.sentinel_options}
    sentinel = Sentinel(address.sentinels, sentinel_kwargs=sentinel_options)
    client: Redis = sentinel.master_for(
        address.service_name, redis_class=Redis, **options, **address.primary_options
    )
    try:
        await client.ping()
    except MasterNotFoundError:
        await client.aclose()
        await sentinel.aclose()
        # redis-py's message holds the whole repr of every Sentinel client.
        hosts = ", ".join(f"{host}:{port}" for host, port in address.sentinels)
        raise MasterNotFoundError(
            f"no Sentinel of {hosts} answered with a primary named {address.service_name!r}"
        ) from None
    except BaseException:
        await client.aclose()
        await sentinel.aclose()
        raise
    return client
