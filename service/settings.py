"""Every knob of both services, read from the environment and validated once.

A bad value stops start-up with one line that names the variable and what it
expects: a typo in `PARTNER_TIMEOUT` should not surface as a stack trace, or
worse, as a service that runs with a default nobody chose.
"""

from __future__ import annotations

import logging.config
from collections.abc import Awaitable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    HttpUrl,
    RedisDsn,
    SecretStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from circuit_breaker import MAX_RETRY_AFTER
from service.chaos import HANG_SECONDS
from service.redis_connection import SentinelAddress, check_files, is_sentinel_url

# The longest wait any setting may ask for. Past it a typo is likelier than a
# wish, and a huge value (1e15 s) overflowed the datetime arithmetic of the
# open state: /offer answered 500 the moment the circuit opened.
A_DAY = 86400.0
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def _lowercase(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _http_url(value: str) -> str:
    # pydantic's URL parser checks the port's range and the host's syntax.
    url = TypeAdapter(HttpUrl).validate_python(value)
    if url.username or url.password:
        raise ValueError("credentials in the URL would be sent to the partner and printed in logs")
    return value.rstrip("/")


def _redis_url(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    assert value is not None
    if urlsplit(value).scheme == "unix":
        if not urlsplit(value).path:
            raise ValueError("no socket path")
        return value
    check_files(value)
    if is_sentinel_url(value):
        SentinelAddress.parse(value)  # a ValueError says what is wrong
        return value
    TypeAdapter(RedisDsn).validate_python(value)
    if not urlsplit(value).hostname:
        raise ValueError("no host")
    return value


def without_password(url: str) -> str:
    """`url` fit for a log line or an error message: its password replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1": no parts to tell a password by, so hide any user part
        scheme, slashes, rest = url.partition("//")
        return f"{scheme}{slashes}***@{rest.rpartition('@')[2]}" if "@" in rest else url
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


Level = Annotated[LogLevel, BeforeValidator(_lowercase)]


class _ServiceSettings(BaseSettings):
    # No inf or nan anywhere: every number is finite and in a range.
    model_config = SettingsConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    host: str = Field("127.0.0.1", min_length=1, description="an address to listen on")
    log_level: Level = Field("info", description="one of debug, info, warning, error, critical")
    admin_token: SecretStr | None = Field(
        None, min_length=16, description="a token of at least 16 characters, or unset"
    )


class PartnerSettings(_ServiceSettings):
    """The partner's settings; its status code lives in the source file, on purpose."""

    port: int = Field(8000, ge=1, le=65535, description="a TCP port, 1-65535")
    partner_latency: float = Field(
        0.0,
        ge=0,
        le=HANG_SECONDS,
        description=f"seconds of added latency, a number from 0 to {HANG_SECONDS:g}",
    )


class OfferSettings(_ServiceSettings):
    """The offer service's settings, with the defaults of the walkthrough."""

    port: int = Field(8001, ge=1, le=65535, description="a TCP port, 1-65535")
    partner_offer_url: Annotated[str, AfterValidator(_http_url)] = Field(
        "http://127.0.0.1:8000", description="an http(s) URL such as http://127.0.0.1:8000"
    )
    partner_timeout: float = Field(
        2.0, gt=0, le=A_DAY, description="seconds for the whole partner call, a number > 0 and <= 86400"
    )
    circuit_fail_max: int = Field(
        3,
        ge=1,
        le=1_000_000,
        description="failures before the circuit opens, a whole number from 1 to 1000000",
    )
    circuit_reset_timeout: float = Field(
        15.0, gt=0, le=A_DAY, description="seconds the circuit stays open, a number > 0 and <= 86400"
    )
    circuit_policy: Annotated[Literal["consecutive", "rate"], BeforeValidator(_lowercase)] = Field(
        "consecutive",
        description="consecutive (CIRCUIT_FAIL_MAX failures in a row) or rate (failure and slow-call rates)",
    )
    circuit_window: float = Field(
        10.0, ge=0.1, le=A_DAY, description="seconds of calls the rate policy looks at, from 0.1 to 86400"
    )
    circuit_min_calls: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="calls in the window before the rates count, a whole number from 1 to 1000000",
    )
    circuit_failure_rate: float = Field(
        0.5, gt=0, le=1, description="the share of failures that opens the circuit, a number > 0 and <= 1"
    )
    # Below PARTNER_TIMEOUT's 2 s, or a call ends as a timeout before it can be slow: with
    # 5 s here, 40 calls of 1.9 s were all "success, not slow" and the rule could never trip.
    circuit_slow_call_seconds: float = Field(
        1.0,
        gt=0,
        le=A_DAY,
        description="seconds after which a call counts as slow, a number > 0 and <= 86400",
    )
    circuit_slow_call_rate: float = Field(
        1.0, gt=0, le=1, description="the share of slow calls that opens the circuit, a number > 0 and <= 1"
    )
    circuit_half_open_calls: int = Field(
        1,
        ge=1,
        le=1000,
        description="trial calls in half-open, one at a time, that must all succeed to close, 1 to 1000",
    )
    # One partner's "come back later" holds the whole fleet open: ten minutes at most, so a
    # wrong header (a day, say) cannot serve cold offers for longer; trials re-measure after.
    circuit_retry_after_max: float = Field(
        MAX_RETRY_AFTER,
        ge=0,
        le=600,
        description="the longest Retry-After honoured, in seconds, from 0 (ignore them) to 600",
    )
    redis_url: Annotated[str | None, AfterValidator(_redis_url)] = Field(
        None,
        description=(
            "a redis:// URL (rediss:// for TLS, redis+sentinel://host:port,host:port/service_name"
            " for Sentinel), or unset for memory state"
        ),
    )
    # How long start-up keeps trying Redis (the connection, then the shared state's first
    # load) before it stops with one line. Each try has the breaker's own short timeouts
    # (redis_state.REDIS_TIMEOUT, 0.25 s), which a loaded machine overruns now and then: a
    # single try said "unreachable: Timeout reading from ..." beside a healthy Redis. A
    # deployment starts under load, often beside a Redis that is starting too; ten seconds is
    # dozens of tries, and still short enough for a wrong URL to be reported while someone is
    # watching.
    redis_startup_seconds: float = Field(
        10.0,
        gt=0,
        le=A_DAY,
        description="seconds start-up keeps trying to reach Redis, a number > 0 and <= 86400",
    )
    workers: int = Field(
        1, ge=1, le=64, description="uvicorn worker processes for `python offer_service.py`, 1-64"
    )
    httpx_log_level: Level = Field("warning", description="one of debug, info, warning, error, critical")


SettingsT = TypeVar("SettingsT", bound=_ServiceSettings)


def combination_warnings(settings: OfferSettings) -> list[str]:
    """One line for each combination of valid settings that cannot do what it says."""
    lines = []
    if settings.circuit_policy == "rate" and settings.circuit_slow_call_seconds >= settings.partner_timeout:
        lines.append(
            f"CIRCUIT_SLOW_CALL_SECONDS={settings.circuit_slow_call_seconds:g} is not below "
            f"PARTNER_TIMEOUT={settings.partner_timeout:g}: a call that slow ends as a timeout, "
            "so the slow-call rate can never open the circuit; set it below PARTNER_TIMEOUT"
        )
    return lines


class SettingsError(SystemExit):
    """Raised at start-up; SystemExit so the process ends with the message, not a traceback."""


def load(settings_class: type[SettingsT]) -> SettingsT:
    """Read `settings_class` from the environment or exit with one line per bad variable."""
    try:
        return settings_class()
    except ValidationError as error:
        raise SettingsError(_describe(settings_class, error)) from None


def _describe(settings_class: type[_ServiceSettings], error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0])
        expected = settings_class.model_fields[field].description
        if field == "admin_token":
            value = "<hidden>"  # never print a secret
        elif field.endswith("_url") and isinstance(problem["input"], str):
            value = repr(without_password(problem["input"]))
        else:
            value = repr(problem["input"])
        lines.append(f"error: {field.upper()}={value} is invalid, expected {expected}{_why(problem)}")
    return "\n".join(lines)


def _why(problem: Any) -> str:
    """What exactly is wrong with a URL, which "expected a URL" alone does not say."""
    if problem["type"] in ("value_error", "url_parsing", "url_scheme"):
        message = str(problem["msg"]).removeprefix("Value error, ")
        return f" ({message.removeprefix('Input should be a valid URL, ')})"
    return ""


class OneLineStartupErrors:
    """ASGI middleware: a `SettingsError` raised in the lifespan ends start-up with its one line.

    Starlette hands the server the whole traceback of a failed lifespan, and
    `uvicorn offer_service:app` logs it; this hands over the message alone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain method handing requests the app's own awaitable: no coroutine of its
        # own wrapped around each of them.
        if scope["type"] != "lifespan":
            return self.app(scope, receive, send)
        return self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []

        async def hold_startup_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_startup_failure)
        except SettingsError as error:
            await send({"type": "lifespan.startup.failed", "message": str(error)})
        except BaseException:
            for message in held:
                await send(message)
            raise


def configure_logging(level: str, httpx_level: str = "warning") -> None:
    """Apply `log_config` in this process: from an app's lifespan, so that it
    holds however the app was started (`python offer_service.py`, `uvicorn`, workers).

    uvicorn has configured its loggers by then: `--no-access-log` left its access
    logger nowhere to write, and that choice is kept."""
    access_log = logging.getLogger("uvicorn.access").hasHandlers()
    logging.config.dictConfig(log_config(level, httpx_level, access_log))


def log_config(level: str, httpx_level: str = "warning", access_log: bool = True) -> dict[str, Any]:
    """One format for our loggers, uvicorn's and httpx's; also given to `uvicorn.run`
    so that the reloader's own lines look the same. With `access_log` off the access
    logger gets nowhere to write, which is how uvicorn is told not to build a line
    per request."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {
                "format": "%(levelname)s [%(asctime)s] %(name)s - %(message)s",
                "datefmt": "%Y-%m-%d %H:%M:%S",
            }
        },
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"handlers": ["default"], "level": upper},
        "loggers": {
            # uvicorn's own config (when started as `uvicorn ...`) gives its loggers
            # handlers and no propagation; hand them to the root's handler instead.
            **{
                name: {"level": upper, "handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error")
            },
            "uvicorn.access": {"level": upper, "handlers": [], "propagate": access_log},
            "httpx": {"level": httpx_level.upper()},
            "httpcore": {"level": "WARNING"},
        },
    }
