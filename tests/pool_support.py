"""A cloud that is not there, for the start every cloud backend shares
(:class:`flowrig.backends.pool.PoolBackend`): a :class:`FakeRun` records each step the
template takes and fails at the step a test names; :class:`FakeBackend` opens it.

Only the cloud is fake: the cluster the template starts is a real
:class:`~flowrig.backends.pool.PoolCluster`, on a real mutual-TLS scheduler where a test
needs one to start.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from flowrig.backends.base import Options
from flowrig.backends.pool import CloudRun, Launcher, PoolBackend


class FakeOptions(Options):
    provision_timeout: float = Field(30.0, description="seconds the start may take")
    scheduler_address: str | None = Field(None, description="a running scheduler")
    dashboard: bool = Field(False, description="open the dashboard")
    certificates: bool = Field(True, description="the roles read the run's certificates from the cloud")


class FakeRun(CloudRun):
    """Records the template's calls (``steps``); raises ``fail_at[step]`` at that step."""

    provider = "fake-cloud"

    def __init__(self, launcher: Launcher | None, options: FakeOptions, fail_at: dict[str, BaseException],
                 leftovers: list[str]) -> None:
        self._launcher = launcher
        self.options = options
        self.fail_at = fail_at
        self.leftovers = leftovers
        self.steps: list[str] = []
        self.stored: list[str] = []
        self.secret_ref: str | None = None

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if name in self.fail_at:
            raise self.fail_at[name]

    @property
    def needs_certificates(self) -> bool:
        return self.options.certificates

    def prepare(self) -> None:
        self._step("prepare")

    def store_certificates(self, line: str) -> str | None:
        self._step("store_certificates")
        self.stored.append(line)
        return "secret-of-the-run"

    def launcher(self, secret_ref: str | None, deadline: float) -> Launcher:
        self.secret_ref = secret_ref
        self._step("launcher")
        assert self._launcher is not None, "the test gave no launcher"
        return self._launcher

    def close(self) -> list[str]:
        self._step("close")
        return list(self.leftovers)

    def network_description(self) -> str:
        return "the fake network"


class FakeBackend(PoolBackend):
    name = "fakecloud"
    extra = "fake"
    options_model = FakeOptions
    sdk_modules: ClassVar[tuple[str, ...]] = ("json",)

    def __init__(self, launcher: Launcher | None = None, fail_at: dict[str, BaseException] | None = None,
                 leftovers: list[str] | None = None) -> None:
        self._launcher = launcher
        self.fail_at = fail_at or {}
        self.leftovers = leftovers or []
        self.runs: list[FakeRun] = []

    def open_run(self, spec: Any, options: FakeOptions) -> FakeRun:
        if "open_run" in self.fail_at:
            raise self.fail_at["open_run"]
        run = FakeRun(self._launcher, options, self.fail_at, self.leftovers)
        self.runs.append(run)
        return run
