"""The real `edge-agent` process, started, stopped and killed by tests."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class AgentProcess:
    """`python -m agent run -c CONFIG` with its stderr in a log file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        nofile: int | None = None,
    ) -> None:
        """`nofile`: RLIMIT_NOFILE (soft and hard) for the agent, as a unit's LimitNOFILE=."""
        self.config = config
        self.log = log
        self.env = dict(env or {})  # added to the test's environment (e.g. NOTIFY_SOCKET)
        self.nofile = nofile
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env={
                    **os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **self.env
                },
                preexec_fn=None if self.nofile is None else self._limit_descriptors,
            )
        return self

    def _limit_descriptors(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, *, after: int = 0, timeout: float = 20.0) -> None:
        """Wait until `needle` appears in the log past offset `after` (bounded)."""
        deadline = time.monotonic() + timeout
        while needle not in self.log_text()[after:]:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                raise AssertionError(f"agent exited ({code}):\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in agent log within {timeout} s:\n"
                                     f"{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def exit_code(self) -> int | None:
        """The exit code if the process has exited, else None (it runs)."""
        assert self._process is not None
        return self._process.poll()

    def wait_exit(self, timeout: float) -> int:
        """Wait (bounded) for the process to exit by itself; its exit code."""
        assert self._process is not None
        return self._process.wait(timeout=timeout)

    def hup(self) -> None:
        """SIGHUP: what `systemctl reload` sends (the agent re-reads its config)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the clean stop; returns the exit code."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Dump the agent's Python stacks (faulthandler on SIGABRT) before failing.
            self._process.send_signal(signal.SIGABRT)
            time.sleep(1.0)
            raise AssertionError(
                f"agent did not stop within {timeout} s of SIGTERM:\n{self.log_text()[-6000:]}"
            ) from None

    def ensure_stopped(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
