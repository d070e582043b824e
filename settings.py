"""Every knob of both services, read from the environment and validated once.

A bad value stops start-up with one line that names the variable and what it
expects: a typo in `PARTNER_TIMEOUT` should not surface as a stack trace, or
worse, as a service that runs with a default nobody chose.
"""

from __future__ import annotations

import logging.config
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def _lowercase(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    return value.rstrip("/")


def _redis_url(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError("not a redis:// URL")
    return value


Level = Annotated[LogLevel, BeforeValidator(_lowercase)]


class _ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    host: str = Field("127.0.0.1", min_length=1, description="an address to listen on")
    log_level: Level = Field("info", description="one of debug, info, warning, error, critical")
    admin_token: SecretStr | None = Field(
        None, min_length=16, description="a token of at least 16 characters, or unset"
    )


class PartnerSettings(_ServiceSettings):
    """The partner's settings; its status code lives in the source file, on purpose."""

    port: int = Field(8000, ge=1, le=65535, description="a TCP port, 1-65535")
    partner_latency: float = Field(0.0, ge=0, description="seconds of added latency, a number >= 0")


class OfferSettings(_ServiceSettings):
    """The offer service's settings, with the defaults of the walkthrough."""

    port: int = Field(8001, ge=1, le=65535, description="a TCP port, 1-65535")
    partner_offer_url: Annotated[str, AfterValidator(_http_url)] = Field(
        "http://127.0.0.1:8000", description="an http(s) URL such as http://127.0.0.1:8000"
    )
    partner_timeout: float = Field(2.0, gt=0, description="seconds for the whole partner call, a number > 0")
    circuit_fail_max: int = Field(
        3, ge=1, description="failures before the circuit opens, a whole number >= 1"
    )
    circuit_reset_timeout: float = Field(
        15.0, gt=0, description="seconds the circuit stays open, a number > 0"
    )
    redis_url: Annotated[str | None, AfterValidator(_redis_url)] = Field(
        None, description="a redis:// URL, or unset for memory state"
    )
    workers: int = Field(
        1, ge=1, le=64, description="uvicorn worker processes for `python offer_service.py`, 1-64"
    )
    httpx_log_level: Level = Field("warning", description="one of debug, info, warning, error, critical")


SettingsT = TypeVar("SettingsT", bound=_ServiceSettings)


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
        value = "<hidden>" if field == "admin_token" else repr(problem["input"])  # never print a secret
        lines.append(f"error: {field.upper()}={value} is invalid, expected {expected}")
    return "\n".join(lines)


def configure_logging(level: str, httpx_level: str = "warning") -> None:
    """Apply `log_config` in this process: from an app's lifespan, so that it
    holds however the app was started (`python offer_service.py`, `uvicorn`, workers)."""
    logging.config.dictConfig(log_config(level, httpx_level))


def log_config(level: str, httpx_level: str = "warning") -> dict[str, Any]:
    """One format for our loggers, uvicorn's and httpx's; also given to `uvicorn.run`
    so that the reloader's own lines look the same."""
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
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            "httpx": {"level": httpx_level.upper()},
            "httpcore": {"level": "WARNING"},
        },
    }
