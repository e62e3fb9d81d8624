"""What the service says of an Azure call that failed (``shared.azure.upstream``): the service, its status and code,
and what to do; never the error's class name, never the body Azure answered (it may echo the request)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from shared.azure.upstream import KEY_VAULT, TABLE_STORAGE, label, sentence, translated, upstream_error
from shared.errors import SecretGone, UpstreamError, UpstreamThrottled


class _Answer:
    """An Azure answer as azure-core reads one into an ``HttpResponseError`` (its status, headers and body)."""

    def __init__(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = headers or {}
        self._body = f'{{"error": {{"code": "{code}", "message": "echoed: s3cr3t-value"}}}}'

    def text(self, encoding: Any = None) -> str:
        return self._body

    def body(self) -> bytes:
        return self._body.encode()


def answered(status: int, code: str, upstream: str | None = None, **headers: str) -> HttpResponseError:
    error = HttpResponseError(response=_Answer(status, code, headers))
    if upstream:
        label(error.response, upstream)  # as the service's transport marks every answer
    return error


def test_a_refusal_of_the_service_s_identity_names_the_service_and_the_role_that_restores_it() -> None:
    told = upstream_error(answered(403, "Forbidden"), "read a secret version", KEY_VAULT)
    assert type(told) is UpstreamError and told.status == 502
    assert told.detail == ("Key Vault refused the service's own identity (403 Forbidden) to read a secret version: "
                           "the service's managed identity needs the Key Vault Secrets Officer role on the credential "
                           "vault (KEY_VAULT_URL), which the deployment grants (docs/deployment.md): restore that "
                           "role assignment.")
    # the service its transport labelled the answer with, when no adapter named it (a Table Storage SDK write)
    tables = upstream_error(answered(403, "AuthorizationPermissionMismatch", "tables"))
    assert tables.detail.startswith("Table Storage refused the service's own identity (403 "
                                    "AuthorizationPermissionMismatch)")
    assert "Storage Table Data Contributor" in tables.detail
    for detail in (told.detail, tables.detail):
        assert "HttpResponseError" not in detail and "s3cr3t" not in detail and "try again" not in detail


def test_throttling_left_by_the_retries_is_a_503_with_the_service_s_wait() -> None:
    told = upstream_error(answered(429, "Throttled", "key-vault", **{"Retry-After": "7"}), "store a secret version")
    assert isinstance(told, UpstreamThrottled) and told.headers["Retry-After"] == "7"
    assert told.detail == ("Key Vault is throttling the service (429 Throttled) when asked to store a secret "
                           "version, through every retry; try again in 7 s.")
    # the wait is in the words too, since a log line carries no header: the very wait Retry-After gives (review of
    # this session's changes: the words said 86400 s where the header said 3600, 1 s where it said 30)
    unavailable = upstream_error(answered(503, "", "tables"))
    assert unavailable.detail == "Table Storage is unavailable (503), through every retry; try again in 30 s."
    for given, relayed in (("0.2", "1"), ("0", "30"), ("86400", "3600"), ("Fri, 31 Dec 9999 23:59:59 GMT", "3600")):
        told = upstream_error(answered(429, "", "tables", **{"Retry-After": given}))
        assert told.headers["Retry-After"] == relayed and told.detail.endswith(f"try again in {relayed} s."), given


def test_other_failures_say_the_service_and_status_and_a_code_only_when_it_is_one() -> None:
    assert upstream_error(answered(500, "Internal Error: <echo>", "key-vault")).detail == "Key Vault failed (500)."
    assert upstream_error(ServiceRequestError("reset"), "delete a secret", TABLE_STORAGE).detail == \
        "Table Storage could not be reached to delete a secret."
    assert upstream_error(ConnectionResetError("reset")).detail == "An Azure service could not be reached."
    gone = SecretGone("Key Vault has no version v of s.")
    assert upstream_error(gone) is gone and sentence(gone) == gone.detail
    assert sentence(RuntimeError("a defect's text may quote a request")) == "RuntimeError"


async def test_an_adapter_s_call_is_translated_and_a_defect_or_a_domain_error_goes_through() -> None:
    refused = r"^Key Vault refused the service's own identity \(403"
    with pytest.raises(UpstreamError, match=refused), translated(KEY_VAULT, "read a secret version"):
        raise answered(403, "Forbidden")
    with pytest.raises(SecretGone), translated(KEY_VAULT, "read a secret version"):
        raise SecretGone("gone")
    with pytest.raises(KeyError), translated(KEY_VAULT, "read a secret version"):
        raise KeyError("a bug")
