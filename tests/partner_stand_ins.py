"""Coroutines that stand in for the partner call in the breaker's unit tests."""

from __future__ import annotations

from circuit_breaker import PartnerRejected


class PartnerDown(Exception):
    pass


async def ok() -> str:
    return "hot"


async def fail() -> str:
    raise PartnerDown("500")


async def reject() -> str:
    raise PartnerRejected("404")
