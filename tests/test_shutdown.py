"""SIGTERM under load: requests in flight finish, connections close, nothing is lost."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import httpx

from tests.processes import RedisServer, uvicorn_service, wait_for


def test_sigterm_under_load_finishes_the_requests_in_flight(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with uvicorn_service(
        "partner_offer_service:app", env={"PARTNER_LATENCY": "0.5"}, log_dir=tmp_path
    ) as partner:
        env = {"PARTNER_OFFER_URL": partner.url, "REDIS_URL": redis_server.url}
        offers = uvicorn_service("offer_service:app", env=env, log_dir=tmp_path).start()
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(httpx.get, f"{offers.url}/offer", timeout=10) for _ in range(20)]
            wait_for(
                lambda: partner.get("/stats").json()["requests_received"] == 20, timeout=5, what="in flight"
            )
            assert offers.process is not None
            os.killpg(offers.process.pid, signal.SIGTERM)
            started = time.monotonic()
            responses = [future.result() for future in futures]
        # uvicorn ends by re-raising the signal it handled, once shut down cleanly.
        assert offers.process.wait(10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
    assert [r.status_code for r in responses] == [200] * 20
    assert all(r.headers["x-offer-source"] == "partner" for r in responses)
    log = offers.log()
    assert "shutdown: the partner client and the Redis connections are closed" in log
    assert "Application shutdown complete" in log
