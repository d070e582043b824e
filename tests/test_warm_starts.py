"""Services started warm (tools/warm_starts.py) are what a cold start makes of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tools import warm_starts
from tools.processes import copy_project, uvicorn_service


def test_a_warm_service_is_a_uvicorn_process_of_its_own_session_with_its_environment(tmp_path: Path) -> None:
    service = uvicorn_service("partner_offer_service:app", env={"PARTNER_LATENCY": "0.01"}, log_dir=tmp_path)
    with service:
        assert isinstance(service.process, warm_starts.WarmProcess)
        pid = service.process.pid
        assert os.getsid(pid) == pid  # a session leader, which `Service.stop` signals as a group
        assert Path(f"/proc/{pid}/cwd").resolve() == service.cwd
        assert service.get("/chaos").json()["latency"] == 0.01  # read from its own environment
        assert "Started server process" in service.log()
    # uvicorn shuts down gracefully, then dies of the signal it caught, as from a cold start
    assert service.process.returncode == -signal.SIGTERM
    assert "Finished server process" in service.log()


def test_a_warm_service_imports_the_project_from_its_own_directory(tmp_path: Path) -> None:
    """Tests edit copies of the project: the copy's modules run, not the ones beside the tests."""
    workdir = tmp_path / "copy"
    workdir.mkdir()
    copy_project(workdir)
    source = workdir / "partner_offer_service.py"
    source.write_text(source.read_text().replace("STATUS_CODE = 200", "STATUS_CODE = 503"))
    service = uvicorn_service("partner_offer_service:app", cwd=workdir, log_dir=tmp_path)
    with service:
        assert isinstance(service.process, warm_starts.WarmProcess)
        assert service.get("/offer/hot").status_code == 503


def test_a_warm_service_waited_for_and_killed_answers_as_popen_does(tmp_path: Path) -> None:
    service = uvicorn_service("partner_offer_service:app", log_dir=tmp_path).start()
    assert service.process is not None
    try:
        assert service.process.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            service.process.wait(0.1)
        service.process.kill()
        assert service.process.wait(10) == -signal.SIGKILL
        assert service.process.returncode == -signal.SIGKILL
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("args", "env", "warm"),
    [
        ([sys.executable, "-m", "uvicorn", "offer_service:app"], {}, True),
        ([sys.executable, "offer_service.py"], {}, False),  # the walkthrough's script, with reload
        (["faketime", "-f", "+30s", sys.executable, "-m", "uvicorn", "offer_service:app"], {}, False),
        ([sys.executable, "-c", "...", "-m", "uvicorn", "offer_service:app"], {}, False),
        ([sys.executable, "-m", "uvicorn", "offer_service:app"], {"LD_PRELOAD": "libfaketime.so.1"}, False),
        ([sys.executable, "-m", "uvicorn", "offer_service:app"], {"PYTHONPATH": "/elsewhere"}, False),
        (["/usr/bin/python3", "-m", "uvicorn", "offer_service:app"], {}, False),  # another Python
    ],
)
def test_only_a_plain_uvicorn_start_with_python_unchanged_is_warm(
    args: list[str], env: dict[str, str], warm: bool
) -> None:
    assert warm_starts.can_start(args, {**os.environ, **env}) is warm


def test_a_python_setting_removed_from_the_environment_starts_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    args = [sys.executable, "-m", "uvicorn", "offer_service:app"]
    assert warm_starts.can_start(args, dict(os.environ))
    assert not warm_starts.can_start(args, {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"})


def test_a_process_forked_from_the_tests_starts_cold() -> None:
    """A fork (mutmut runs each mutant's tests in one) cannot use its parent's forkserver."""
    args = [sys.executable, "-m", "uvicorn", "offer_service:app"]
    assert warm_starts.can_start(args, dict(os.environ))
    child = os.fork()
    if child == 0:
        os._exit(0 if not warm_starts.can_start(args, dict(os.environ)) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_nothing_preloaded_reads_the_environment_the_services_are_given() -> None:
    """prometheus-client picks its multi-process mode once, at import, from
    PROMETHEUS_MULTIPROC_DIR: preloaded, every warm service would have the tests' choice."""
    imports = "; ".join(f"import {name}" for name in warm_starts.PRELOADED)
    project = ("offer_service", "partner_offer_service", "circuit_breaker", "service", "prometheus_client")
    check = f"{imports}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {project!r}))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
