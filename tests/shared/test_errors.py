"""Every domain error becomes a problem document (RFC 9457) with its own status, and none is a bare 500."""

from __future__ import annotations

import importlib
import json
import pkgutil

import pytest

import shared
from shared.errors import PROBLEM_CONTENT_TYPE, FieldError, ServiceError
from shared.functions.http import problem_response


def _every_error_type() -> list[type[ServiceError]]:
    for module in pkgutil.walk_packages(shared.__path__, "shared."):
        if not module.name.startswith("shared.functions"):
            importlib.import_module(module.name)
    found: list[type[ServiceError]] = []
    pending = [ServiceError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return found


ERRORS = _every_error_type()


def test_the_walk_finds_the_lifecycle_errors() -> None:
    names = {kind.__name__ for kind in ERRORS}
    assert {"RotationInProgress", "LeaseLost", "RotationFailed", "RotationRefused", "CredentialsLeftLive",
            "ConcurrentChange", "NameTaken", "OAuthFailed", "ReauthorizationRequired"} <= names


@pytest.mark.parametrize("kind", ERRORS, ids=lambda kind: kind.__name__)
def test_each_error_type_maps_to_its_problem(kind: type[ServiceError]) -> None:
    error = kind("what went wrong", errors=[FieldError("/name", "is wrong")], headers={"Retry-After": "3"},
                 extensions={"rotationId": "r1"})
    response = problem_response(error, "/api/v1/x")
    assert response.status_code == kind.status
    assert response.mimetype == PROBLEM_CONTENT_TYPE
    problem = json.loads(response.get_body())
    assert problem["type"] == f"urn:app-connections:problem:{kind.slug}"
    assert problem["status"] == kind.status
    assert problem["title"] == kind.title
    assert problem["detail"] == "what went wrong"
    assert problem["errors"] == [{"pointer": "/name", "detail": "is wrong"}]
    assert problem["rotationId"] == "r1"
    assert response.headers["Retry-After"] == "3"
    if kind is not ServiceError:
        assert kind.slug != "internal-error", f"{kind.__name__} has no problem type of its own"
        assert kind.status != 500, f"{kind.__name__} would answer a bare 500"


def test_a_best_effort_step_goes_past_a_failed_azure_call_and_lets_a_bug_through() -> None:
    from azure.core.exceptions import ServiceRequestError

    from shared.errors import UpstreamError, best_effort

    failures: list[Exception] = []
    for failure in (UpstreamError("Table Storage failed"), ServiceRequestError("connection reset"), TimeoutError()):
        with best_effort(failures.append):
            raise failure
    assert [type(f) for f in failures] == [UpstreamError, ServiceRequestError, TimeoutError]
    with pytest.raises(KeyError), best_effort(failures.append):
        raise KeyError("a bug")
    assert len(failures) == 3


@pytest.mark.parametrize(("retry_after", "header"), [(120.0, "120"), (0.2, "1"), (None, "30"), (0.0, "30"),
                                                     (float("inf"), "30"), (86400.0 * 365, "3600"),
                                                     (1e300, "3600")])
def test_a_throttling_that_outlasted_the_retries_is_a_503_with_the_service_s_wait_else_the_budget(
        retry_after: float | None, header: str) -> None:
    """(Review FC 1.) A 503 whose ``Retry-After`` is the service's last wait (whole seconds, at least one, at most
    an hour: a year, or a date far ahead, was relayed as it came: review Z2), else the retry budget; still an
    ``UpstreamError``, as every Azure failure."""
    from shared.azure.retry import RETRY_BUDGET
    from shared.errors import UpstreamError, UpstreamThrottled

    error = UpstreamThrottled("Table Storage is busy", retry_after=retry_after)
    assert isinstance(error, UpstreamError) and error.status == 503
    assert error.headers == {"Retry-After": header if header != "30" else str(int(RETRY_BUDGET))}
