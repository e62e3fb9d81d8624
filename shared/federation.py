"""The federated method's one fact: which federated identity credential an application needs for the service.

A federated connection holds nothing secret. The service signs in as the customer's application with a client
assertion that is its own user-assigned managed identity's token for the token-exchange audience; Entra ID
accepts it when the application has a federated identity credential naming that identity: issuer
``{authority}/{identity tenant}/v2.0``, subject the identity's principal (object) id, audience
``api://AzureADTokenExchange`` (the national clouds have their own: ``Settings.token_exchange_audience``, by
``AZURE_CLOUD``). This module says what that credential is,
whether the service is set up for it (the ``FEDERATION_IDENTITY_*`` settings), and turns Entra's refusal into a
problem that shows what is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.errors import CredentialRejected, FieldError, InvalidRequest
from shared.settings import Settings

# Entra ID's limit of federated identity credentials per application.
MAX_FEDERATED_CREDENTIALS = 20
SETTINGS = ("FEDERATION_IDENTITY_CLIENT_ID", "FEDERATION_IDENTITY_PRINCIPAL_ID", "FEDERATION_IDENTITY_TENANT_ID")
LIMITS = (
    "The app registration must be in the managed identity's tenant (Entra ID refuses an identity of another tenant: "
    "AADSTS700236); a multi-tenant application registered there also signs in to the tenants it is provisioned in.",
    f"An application has at most {MAX_FEDERATED_CREDENTIALS} federated identity credentials; each issuer and "
    "subject pair at most once.",
    "Changes to federated identity credentials can take a few minutes to take effect.",
)
# AADSTS codes meaning the application has no matching federated credential (or the assertion does not match it).
FEDERATION_CODES = ("AADSTS70021", "AADSTS700211", "AADSTS700212", "AADSTS700213", "AADSTS7002138", "AADSTS700024",
                    "AADSTS70025", "AADSTS700236")
# The one of them meaning that the identity is of another tenant than the application's: Entra ID refuses it whatever
# federated credential the application has, and however long one had to propagate.
OTHER_TENANT_CODE = "AADSTS700236"
# Those of them meaning that no federated credential of the application matches the service's identity (none at all:
# AADSTS70025; none whose issuer, audience or subject matches, the subject's case included).
NO_MATCH_CODES = frozenset({"AADSTS70021", "AADSTS700211", "AADSTS700212", "AADSTS700213", "AADSTS7002138"})


@dataclass(frozen=True)
class FederationIdentity:
    """The service's managed identity, as a federated identity credential must name it."""

    client_id: str
    principal_id: str
    tenant_id: str
    issuer: str
    audience: str

    def credential(self, name: str) -> dict[str, Any]:
        """The federated identity credential (Graph's ``federatedIdentityCredential``) with this name."""
        return {"name": name, "issuer": self.issuer, "subject": self.principal_id, "audiences": [self.audience],
                "description": "Azure App Connections signs in as this application with its managed identity."}

    def matches(self, issuer: str | None, subject: str | None, audiences: list[str] | tuple[str, ...]) -> bool:
        # Exactly, as Entra ID matches them (case-sensitive, no slash added or taken away): a credential that only
        # looks like it trusts the identity would be taken as usable and never work.
        return issuer == self.issuer and subject == self.principal_id and self.audience in audiences

    def expected(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "subject": self.principal_id, "audiences": [self.audience]}


def federation_identity(settings: Settings) -> FederationIdentity | None:
    """The identity, or None when a ``FEDERATION_IDENTITY_*`` setting is missing."""
    client_id = settings.federation_identity_client_id
    principal_id = settings.federation_identity_principal_id
    tenant_id = settings.federation_identity_tenant_id
    if not (client_id and principal_id and tenant_id):
        return None
    issuer = f"{settings.authority_host.rstrip('/')}/{tenant_id}/v2.0"
    return FederationIdentity(client_id, principal_id, tenant_id, issuer, settings.token_exchange_audience)


def unavailable_reason(settings: Settings) -> str | None:
    if federation_identity(settings) is not None:
        return None
    missing = [name for name, value in zip(SETTINGS, (settings.federation_identity_client_id,
                                                      settings.federation_identity_principal_id,
                                                      settings.federation_identity_tenant_id), strict=True)
               if not value]
    return (f"The service has no managed identity for federation: set {', '.join(missing)} (the user-assigned "
            "identity whose tokens are the client assertions).")


def require_identity(settings: Settings, pointer: str = "/method") -> FederationIdentity:
    identity = federation_identity(settings)
    if identity is None:
        reason = unavailable_reason(settings) or ""
        raise InvalidRequest(f"The federated method is not available on this service. {reason}",
                             extensions={"method": "federated", "settings": list(SETTINGS)},
                             errors=[FieldError(pointer, "federated is not available here (see GET "
                                                         "/api/v1/app-connections/options)")])
    return identity


def refused_as_removed(identity: FederationIdentity | None, code: str | None, sent_as: str | None) -> bool:
    """A sign-in at an application, refused with ``code``, after the removal of the federated credential the service
    added there was sent while it named the identity ``sent_as``: none matches the service's identity any more
    (``NO_MATCH_CODES``), and the service still has that identity (under another, the refusal proves nothing)."""
    return code in NO_MATCH_CODES and sent_as is not None and identity is not None and sent_as == identity.principal_id


SERVICE_APPLICATION = ("A federated connection cannot sign in as one of this service's own applications (its API "
                       "registration, OAuth clients or managed identity).")


def service_applications(settings: Settings) -> frozenset[str]:
    """The client ids of the service's own applications (lower case): the API registration (AUTH_AUDIENCE, as the
    console signs in with it), the instance's OAuth clients and the federation identity itself."""
    own = [settings.auth_audience.removeprefix("api://") if settings.auth_audience else None,
           settings.federation_identity_client_id,
           *(client.client_id for client in settings.oauth_clients.values())]
    return frozenset(client_id.lower() for client_id in own if client_id)


def refuse_service_application(settings: Settings, client_id: str, pointer: str | None = "/credentials/clientId"
                               ) -> None:
    """A federated connection signs in with the service's identity: to one of the service's own applications (the
    API registration trusts that identity for the console's sign-in), it would make the service sign in as itself
    for whoever may create a connection. Refused (a field error at ``pointer`` when the request has that field)."""
    if client_id.lower() in service_applications(settings):
        errors = [FieldError(pointer, "is one of this service's own applications")] if pointer else []
        raise InvalidRequest(SERVICE_APPLICATION, errors=errors)


CREDENTIAL_PREFIX = "app-connections-"


def credential_name(connection_id: str) -> str:
    """The name of the federated credential the service adds for a connection (3-120 letters, digits, '-')."""
    return f"{CREDENTIAL_PREFIX}{connection_id}"


# The name the service gives what it adds: the prefix and a connection's id (a UUID).
_SERVICE_NAME = re.compile(re.escape(CREDENTIAL_PREFIX) + r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\Z")


def added_by_service(name: str) -> bool:
    """A federated credential the service added (for some connection: :func:`credential_name`), not one the
    application's owner did: the name the options suggest to owners (``app-connections-federation``) shares the
    prefix, so the connection id must follow it."""
    return _SERVICE_NAME.match(name) is not None


def explain(rejected: CredentialRejected, identity: FederationIdentity) -> CredentialRejected:
    """Entra's refusal of a federated sign-in, with the federated credential the application needs; for an
    identity of another tenant (``OTHER_TENANT_CODE``), the tenant the application must be registered in."""
    extensions = dict(rejected.extensions)
    extensions["expectedFederatedCredential"] = identity.expected()
    code = str(extensions.get("aadstsCode") or "")
    detail = rejected.detail
    if code == OTHER_TENANT_CODE:
        detail = (f"{detail} The application must be registered in the tenant of the service's managed identity, "
                  f"{identity.tenant_id}: Entra ID refuses an identity of another tenant, whatever federated "
                  "identity credential the application has (a multi-tenant application registered there also signs "
                  "in to the tenants it is provisioned in).")
    elif code in FEDERATION_CODES or not code:
        detail = (f"{detail} The application needs a federated identity credential with issuer {identity.issuer}, "
                  f"subject {identity.principal_id} and audience {identity.audience} (see GET "
                  "/api/v1/app-connections/options).")
    return CredentialRejected(detail, extensions=extensions)
