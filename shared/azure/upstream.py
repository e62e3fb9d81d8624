"""What the service says of an Azure call that failed: which service, what it answered, and what to do.

The adapters whose SDK lets an azure-core error through (Key Vault: ``shared.store.vault``; Table Storage's SDK
writes) have it turned into an :class:`~shared.errors.UpstreamError` here, and every message built from an error
(a rotation's ``lastRotationMessage``, its history, audit and notice; a connection's ``health.message``; a route's
problem; a log line) takes that error's sentence, never the error's class name:

- 401 or 403: the service named refused the service's own identity, and the role the deployment grants it
  (``infra/app/rbac.bicep``) is what restores it (waiting does not);
- 429 or 503: :class:`~shared.errors.UpstreamThrottled` (a ``503`` with ``Retry-After``: the service's last wait);
- another status: the service failed (its status and error code, never its body, which may echo the request);
- no answer: the service could not be reached.

The service is the one the adapter names; else the upstream its transport labelled the request with
(``shared.azure.clients``: :func:`label`). A failure labelled ``OWN_IDENTITY`` (by the service's own credential,
``shared.azure.clients.OwnIdentity``, and its token requests' transport: an SDK such as Table Storage's raises it
from its own call, unnamed) is the service's own identity that got no token, told as such, whichever service the
call was for. No SDK is imported: an azure-core error is known by its module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress

from shared.errors import ServiceError, ServiceMisconfigured, UpstreamError, UpstreamThrottled

KEY_VAULT = "Key Vault"
TABLE_STORAGE = "Table Storage"
ENTRA_ID = "Entra ID"
GRAPH = "Microsoft Graph"
# The label of the service's own identity's token requests (the host's managed-identity endpoint): Entra ID's side,
# but what failed is the service's own sign-in, whichever service's call it was for.
OWN_IDENTITY = "entra-own-identity"
# The upstream labels of ``shared.azure.clients`` (its transports') and the service each names.
SERVICES = {"key-vault": KEY_VAULT, "tables": TABLE_STORAGE, "entra": ENTRA_ID, "graph": GRAPH, OWN_IDENTITY: ENTRA_ID}
# What restores a refusal of the service's own identity: the role the deployment grants it (infra/app/rbac.bicep).
REMEDIES = {
    KEY_VAULT: "the service's managed identity needs the Key Vault Secrets Officer role on the credential vault "
               "(KEY_VAULT_URL), which the deployment grants (docs/deployment.md): restore that role assignment",
    TABLE_STORAGE: "the service's managed identity needs the Storage Table Data Contributor role on the storage "
                   "account, which the deployment grants (docs/deployment.md): restore that role assignment",
}
GENERIC_REMEDY = "check the service's managed identity and its role assignments (docs/deployment.md)"
# What restores the service's own token: the identity the host signs in with (docs/troubleshooting.md).
IDENTITY_REMEDY = ("check that the managed identity is assigned to the function app and that "
                   "AzureWebJobsStorage__clientId (or, without it, AZURE_CLIENT_ID) names it (locally: "
                   "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET)")
_LABEL = "app_connections_upstream"  # the attribute a transport sets on a response or error it saw
_CODE = re.compile(r"[A-Za-z0-9_.]{1,64}")


def label(target: object, upstream: str) -> None:
    """Mark a transport's response (or the error it raised) as ``upstream``'s, so that an error raised from it
    later names the service (best effort: an object that takes no attribute stays unmarked)."""
    with suppress(AttributeError, TypeError):
        setattr(target, _LABEL, upstream)


def azure_failure(error: BaseException) -> bool:
    """``error`` is an azure-core error or the network's (not a bug, not a domain error)."""
    return isinstance(error, OSError | TimeoutError) or any(
        cls.__module__ == "azure.core.exceptions" for cls in type(error).__mro__)


def service_of(error: BaseException) -> str | None:
    """The service a transport marked ``error`` (or its response) as coming from, or None."""
    upstream = _label_of(error)
    return SERVICES.get(upstream) if isinstance(upstream, str) else None


def _label_of(error: BaseException) -> object:
    return getattr(error, _LABEL, None) or getattr(getattr(error, "response", None), _LABEL, None)


def upstream_error(error: BaseException, action: str | None = None, service: str | None = None) -> ServiceError:
    """``error`` as the domain error an operator reads (see the module docstring): a service error as it is, an
    azure-core or network error as an :class:`UpstreamError` (``UpstreamThrottled`` for a 429 or 503) whose detail
    names ``service`` (else the one its transport marked), its status and code, and what to do. ``action``: what
    the call was to do ("read a secret version")."""
    if isinstance(error, ServiceError):
        return error
    if _label_of(error) == OWN_IDENTITY:
        return _no_token(error, action, service)
    name = service or service_of(error)
    who = name or "An Azure service"
    doing = f" to {action}" if action else ""
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        return UpstreamError(f"{who} could not be reached{doing}.")
    answered = f"{status} {code}" if (code := _code_of(error)) else str(status)
    if status in (401, 403):
        remedy = REMEDIES.get(name or "", GENERIC_REMEDY)
        return UpstreamError(f"{who} refused the service's own identity ({answered}){doing}: {remedy}.")
    if status in (429, 503):
        from shared.azure.retry import retry_after_of

        busy = "is throttling the service" if status == 429 else "is unavailable"
        asked = f" when asked to {action}" if action else ""
        wait = retry_after_of(_headers(error))
        return UpstreamThrottled(f"{who} {busy} ({answered}){asked}, through every retry; {_try_again(wait)}.",
                                 retry_after=wait)
    return UpstreamError(f"{who} failed{doing} ({answered}).")


def _no_token(error: BaseException, action: str | None, service: str | None) -> ServiceError:
    """A call (to ``service``, when the adapter names it) whose failure is labelled ``OWN_IDENTITY``: the
    service's own identity got no token (the host's managed-identity endpoint, or Entra ID
    for environment credentials locally). Told as such, not as ``service``'s failure, which would send the operator
    to that service's role: a refusal (400, 401, 403: an identity not assigned to the function app, a wrong client
    id or secret) is a ``service-misconfigured``, throttling keeps its wait, anything else is a ``502``. The
    endpoint's message is not quoted (the read path's token, ``shared.azure.managed_identity``, quotes it, its
    header's value removed)."""
    status = getattr(error, "status_code", None)
    doing = (f" to {action} in {service}" if action and service else f" to {action}" if action
             else f" for {service}" if service else "")
    if not isinstance(status, int):
        if any(kind.__name__ == "ClientAuthenticationError" for kind in type(error).__mro__):  # refused, told by
            # azure-identity without the answer (DefaultAzureCredential's chain): its log line says which
            return ServiceMisconfigured(f"The service's own identity could not get a token{doing}: its sign-in "
                                        f"failed (the log says why): {IDENTITY_REMEDY}.")
        return UpstreamError(f"The service's own identity could not get a token{doing}: its token endpoint could "
                             "not be reached.")
    answered = f"{status} {code}" if (code := _code_of(error)) else str(status)
    if status in (429, 503):
        from shared.azure.retry import retry_after_of

        wait = retry_after_of(_headers(error))
        return UpstreamThrottled(f"The service's own identity could not get a token{doing}: its token endpoint is "
                                 f"busy ({answered}) through every retry; {_try_again(wait)}.", retry_after=wait)
    if status in (400, 401, 403):
        return ServiceMisconfigured(
            f"The service's own identity could not get a token{doing} (its token endpoint answered {answered}): "
            f"{IDENTITY_REMEDY}.")
    return UpstreamError(f"The service's own identity could not get a token{doing} (its token endpoint answered "
                         f"{answered}).")


def _try_again(wait: float | None) -> str:
    """When to try again, in words a log line can carry too (it has no Retry-After header beside it): the wait the
    error's ``Retry-After`` gives."""
    return f"try again in {UpstreamThrottled.seconds_of(wait)} s"


def sentence(error: BaseException) -> str:
    """What a message or log line says of ``error``: its :func:`upstream_error` detail for a failed Azure call (a
    service error's own detail), else only its class name (a bug: never its text, which may quote a request)."""
    if isinstance(error, ServiceError) or azure_failure(error):
        return upstream_error(error).detail
    return type(error).__name__


@contextmanager
def translated(service: str, action: str) -> Iterator[None]:
    """Within: an azure-core or network error becomes :func:`upstream_error` naming ``service`` and ``action``."""
    try:
        yield
    except ServiceError:
        raise
    except Exception as error:
        if not azure_failure(error):
            raise
        raise upstream_error(error, action, service) from None


def _code_of(error: BaseException) -> str | None:
    """The error code an Azure answer carried (``error.code`` of its body, as azure-core reads it), when it is one
    (letters, digits, ``_`` and ``.``: never free text, which may echo the request)."""
    code = getattr(error, "error_code", None) or getattr(getattr(error, "error", None), "code", None)
    return code if isinstance(code, str) and _CODE.fullmatch(code) else None


def _headers(error: BaseException) -> Mapping[str, str]:
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    try:
        return {str(name).lower(): str(value) for name, value in dict(headers).items()}
    except (TypeError, ValueError):
        return {}
