"""A stand-in for the few ``ray`` calls :class:`adcore.sweep.executors.RayExecutor` makes.

Tasks run in this process when submitted; what the executor asked for (``init``,
``options``, ``shutdown``) is recorded. A unit whose label is in ``die_for`` fails as a
worker lost past its retries does (a ``RayError``); an exception inside a task reaches
``get`` as a ``RayTaskError`` carrying it as ``cause``, as Ray's does.
"""

from __future__ import annotations

import types
from typing import Any


class RayError(Exception):
    pass


class RayTaskError(RayError):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"task failed: {cause}")
        self.cause = cause


class WorkerCrashedError(RayError):
    pass


class _Ref:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome


class _Task:
    def __init__(self, ray: FakeRay, function: Any) -> None:
        self.ray, self.function = ray, function

    def options(self, **options: Any) -> _Task:
        self.ray.options.append(options)
        return self

    def remote(self, unit: Any) -> _Ref:
        if unit.label in self.ray.die_for:
            return _Ref(WorkerCrashedError("The worker died unexpectedly."))
        try:
            return _Ref(self.function(unit))
        except Exception as error:
            return _Ref(RayTaskError(error))


class FakeRay(types.ModuleType):
    def __init__(self, resources: dict[str, float] | None = None, die_for=()) -> None:
        super().__init__("ray")
        self.resources = resources or {"CPU": 2.0}
        self.die_for = set(die_for)
        self.initialized = False
        self.inits: list[dict[str, Any]] = []
        self.options: list[dict[str, Any]] = []
        self.shutdowns = 0
        self.exceptions = types.SimpleNamespace(RayError=RayError, RayTaskError=RayTaskError)

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        self.initialized = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)

    def remote(self, function: Any) -> _Task:
        return _Task(self, function)

    def wait(self, pending: list[_Ref], num_returns: int = 1) -> tuple[list[_Ref], list[_Ref]]:
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref: _Ref) -> Any:
        if isinstance(ref.outcome, BaseException):
            raise ref.outcome
        return ref.outcome
