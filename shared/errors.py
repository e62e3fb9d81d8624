"""Domain errors, each rendered as an RFC 9457 problem (``application/problem+json``).

The domain raises these; the function layer turns them into HTTP responses. No error
message ever carries a secret: details are built from field names and Entra's codes,
never from the values a caller sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:app-connections:problem:"


@dataclass(frozen=True)
class FieldError:
    """One invalid field: a JSON Pointer (RFC 6901) into the request body and what is wrong."""

    pointer: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


class ServiceError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            problem["instance"] = shown(instance, 256)  # the request's path: an id in it may be thousands long
        if self.errors:
            problem["errors"] = [error.as_dict() for error in self.errors]
        problem.update(self.extensions)
        return problem


class InvalidRequest(ServiceError):
    status = 400
    slug = "invalid-request"
    title = "The request is not valid"


class CredentialRejected(ServiceError):
    """Entra ID refused the credentials (the detail carries the AADSTS code and Entra's message)."""

    status = 400
    slug = "credential-rejected"
    title = "Entra ID rejected the credentials"


class CredentialExpired(CredentialRejected):
    """A stored credential past its end, refused by the service before Entra ID is asked (a certificate's, which
    could not sign a valid assertion any more): as Entra's own refusal of an expired one would be."""


class Unauthorized(ServiceError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(ServiceError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"
    # Who was refused, when the refusal came after they were identified (a forged change by a session's cookie, a
    # token without the API's scope): the refusal is audited with them (``shared.auth.Principal``).
    principal: object | None = None


def shown(value: str, limit: int = 80) -> str:
    """A value the caller sent, as a message quotes it back: cut short past ``limit`` characters (an id in a path
    may be thousands long; nothing the service names is)."""
    return value if len(value) <= limit else value[:limit] + "…"


def escaped(value: str, limit: int) -> str:
    """A value the caller chose, for an audit record (or a message an audit record quotes): printable ASCII (a
    control character, a backslash or any other character escaped as Python writes it: no forged line, no terminal
    escape), at most ``limit`` characters and ``...`` when cut."""
    text = value[:limit].encode("unicode_escape").decode("ascii")
    return text[:limit] + "..." if len(value) > limit or len(text) > limit else text


def failed_upstream(error: BaseException) -> bool:
    """``error`` is a call to Azure that failed (the service's own error, the network's, or an Azure SDK's error type,
    which an adapter may let through), not a bug: what a best-effort step logs and goes past."""
    return isinstance(error, (ServiceError, OSError, TimeoutError)) or any(
        cls.__module__ == "azure.core.exceptions" for cls in type(error).__mro__)


@contextmanager
def best_effort(failed: Callable[[Exception], None]) -> Iterator[None]:
    """A step whose failure (:func:`failed_upstream`) is handed to ``failed`` (which logs it) and gone past; any
    other error, a bug, goes through."""
    try:
        yield
    except Exception as error:
        if not failed_upstream(error):
            raise
        failed(error)


def detail_of(error: BaseException) -> str:
    """What a log line says of a failure: a service error's detail, else only its type (never its message, which
    may quote a request)."""
    return error.detail if isinstance(error, ServiceError) else type(error).__name__


class NotFound(ServiceError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(ServiceError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(ServiceError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class ConcurrentChange(Conflict):
    """The record changed since it was read (its ETag no longer matches)."""

    slug = "concurrent-change"
    title = "The connection was changed by another request"


class PreconditionFailed(ServiceError):
    """``If-Match`` named another version of the connection than the current one (RFC 9110, 13.1.1)."""

    status = 412
    slug = "precondition-failed"
    title = "The connection is not at the version named"


class NameTaken(Conflict):
    slug = "name-taken"
    title = "The name is already used"


class RotationInProgress(Conflict):
    """A rotation of the connection has begun and not ended: changes to its credentials, its rotation or its
    existence wait until it has (``Retry-After``)."""

    slug = "rotation-in-progress"
    title = "A rotation of this connection is in progress"


class ConnectionBeingDeleted(Conflict):
    """The connection is marked as being deleted (a ``DELETE`` stopped half way): nothing but another ``DELETE``
    acts on it, so retrying the same request never succeeds (no ``Retry-After``)."""

    slug = "connection-being-deleted"
    title = "The connection is being deleted"


class LeaseLost(Conflict):
    """Another worker took the rotation over; this one stopped without touching anything more."""

    slug = "rotation-taken-over"
    title = "Another worker took the rotation over"


class RotationFailed(ServiceError):
    """A rotation attempt did not complete because an Azure call failed (the connection's rotation status and
    message say what happened; the credential in use was left working)."""

    status = 502
    slug = "rotation-failed"
    title = "The rotation did not complete"


class RotationRefused(ServiceError):
    """A rotation attempt did not complete because the connection's own credential or permissions were refused:
    its owner must fix them."""

    status = 400
    slug = "rotation-refused"
    title = "The rotation did not complete"


class CredentialsLeftLive(Conflict):
    """Credentials the service created on the application could not be removed, so the connection was kept."""

    slug = "credentials-not-removed"
    title = "Credentials on the application could not be removed"


class RemovalUnconfirmed(CredentialsLeftLive):
    """Entra ID refuses the credential whose removal was sent last, but not yet for REMOVAL_CONFIRMATION_SECONDS
    since it first did: a part of Entra ID that a credential just added has not reached refuses it too, so the
    removal is not taken as done yet (``Retry-After``: the seconds left to wait)."""


class CredentialLifetimeRefused(ServiceError):
    """Microsoft Graph refused a new credential's lifetime under the tenant's app-management policy
    (``CredentialInvalidLifetimeAsPerAppPolicy``), or the policy forbids adding a credential of that kind."""

    status = 400
    slug = "credential-lifetime-refused"
    title = "The tenant's app-management policy refused the new credential"


class CredentialLimitReached(ServiceError):
    """Microsoft Graph refused a new credential because the application holds as many of that kind as Entra ID
    allows it (``TooManyAppPasswords``): its owner must remove unused ones (a rotation answers ``rotation-refused``)."""

    status = 400
    slug = "credential-limit-reached"
    title = "The application holds as many credentials as Entra ID allows"


class RotationIntervalTooLong(InvalidRequest):
    """The rotation interval cannot fit in the lifetime the tenant's app-management policy allows."""

    slug = "rotation-interval-exceeds-policy"
    title = "The rotation interval does not fit the credential lifetime the tenant allows"


class PayloadTooLarge(ServiceError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(ServiceError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class UpstreamError(ServiceError):
    """An Azure service could not be reached or failed in a way retries did not fix."""

    status = 502
    slug = "upstream-error"
    title = "An Azure service did not answer as expected"


class UpstreamThrottled(UpstreamError):
    """An Azure service was still throttling (429) or unavailable (503) when the retries ran out: nothing is wrong
    with the request, so it is a 503 whose ``Retry-After`` is the service's last wait (else the retry budget)."""

    status = 503
    slug = "upstream-throttled"
    title = "An Azure service is busy; try again later"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        self.retry_after = self.wait_of(retry_after)
        super().__init__(detail, errors=errors, headers={"Retry-After": str(self.seconds_of(retry_after)),
                                                         **(headers or {})}, extensions=extensions)

    @staticmethod
    def wait_of(retry_after: float | None) -> float:
        """The wait relayed for a service's ``retry_after``: the retry budget when none (or none usable) came, and a
        wait of days (or a date far ahead) cut to ``MAX_RETRY_AFTER``."""
        import math

        from shared.azure.retry import RETRY_BUDGET  # the schedule alone: no SDK

        wait = retry_after if retry_after is not None and math.isfinite(retry_after) and retry_after > 0 \
            else RETRY_BUDGET
        return min(wait, MAX_RETRY_AFTER)

    @classmethod
    def seconds_of(cls, retry_after: float | None) -> int:
        """That wait in whole seconds, as ``Retry-After`` and the error's sentence give it."""
        import math

        return max(1, math.ceil(cls.wait_of(retry_after)))


MAX_RETRY_AFTER = 3600.0  # seconds: the longest wait a throttled answer asks of its caller


class VersionDisabled(UpstreamError):
    """Key Vault refuses to read a version because it is disabled (it was superseded)."""


class SecretGone(UpstreamError):
    """Key Vault has no such secret or version (deleted outside the service): the connection cannot sign in."""


class UpstreamForbidden(ServiceError):
    """Azure refused a call made with the connection's own credentials for lack of a permission: the
    owner must grant it, so this is the caller's to fix (400), not a service fault."""

    status = 400
    slug = "permission-missing"
    title = "The application lacks a permission"


class AuditUnavailable(ServiceError):
    """The audit record of an action could not be written, so the action did not run (fail closed)."""

    status = 503
    slug = "audit-unavailable"
    title = "The action was not run: its audit record could not be written"


class ServiceMisconfigured(ServiceError):
    status = 503
    slug = "service-misconfigured"
    title = "The service is not configured for this"


class SignInRequired(Unauthorized):
    """A browser call without a live console session (none, expired or ended): sign in again at ``loginUrl``."""

    slug = "unauthenticated"
    title = "Sign in"


class RequestForgery(Forbidden):
    """A state-changing call by session cookie without this service's ``Origin`` or the session's CSRF token."""

    slug = "csrf-rejected"
    title = "The request's origin or CSRF token is not valid"


def entra_said(error: str, description: str | None) -> str:
    """What a refusal Entra sent back through the browser may show of itself: its error code and the AADSTS
    number in its description, never the description's text (whoever sends a browser to the callback with a
    valid state writes that text)."""
    import re

    code = re.sub(r"[^A-Za-z0-9_]", "", error)[:64] or "error"
    number = re.search(r"AADSTS\d{4,9}", description or "")
    return code + (f", {number.group(0)}" if number else "")
