"""Registering tenants, apps, secrets and certificates at the stand-in, for the tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from localdev.standin.pki import make_certificate


@dataclass
class EntraApp:
    tenant_id: str
    client_id: str
    object_id: str
    client_secret: str
    key_id: str

    def client_secret_body(self, **extra: Any) -> dict[str, Any]:
        return {"tenantId": self.tenant_id, "clientId": self.client_id, "clientSecret": self.client_secret, **extra}


def register_app(admin: Any, registry: Any, tenant_id: str | None = None, name: str = "app",
                 roles: tuple[str, ...] = ()) -> EntraApp:
    """An app with a client secret the user gave, in ``tenant_id`` (a new tenant when None)."""
    tenant = tenant_id or admin.add_tenant()
    app = admin.add_app(tenant, display_name=name, roles=roles)
    secret = admin.add_secret(tenant, app["appId"], display_name="given by the user")
    registry.add(secret["secretText"])
    return EntraApp(tenant, app["appId"], app["id"], secret["secretText"], secret["keyId"])


def add_secret(admin: Any, registry: Any, app: EntraApp, expires_in: timedelta | None = None) -> dict[str, Any]:
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    secret = admin.add_secret(app.tenant_id, app.client_id, expires_at=expires_at)
    registry.add(secret["secretText"])
    return dict(secret)


def certificate_body(admin: Any, registry: Any, app: EntraApp, key_type: str = "rsa", key_format: str = "pkcs8",
                     register: bool = True, **validity: Any) -> dict[str, Any]:
    cert_pem, key_pem = make_certificate(f"cn-{app.client_id}", key_type=key_type, key_format=key_format, **validity)
    registry.add(key_pem, *[line for line in key_pem.splitlines() if len(line) >= 40])
    if register:
        admin.add_certificate(app.tenant_id, app.client_id, cert_pem)
    return {"tenantId": app.tenant_id, "clientId": app.client_id, "certificateBody": cert_pem, "privateKey": key_pem}


def identity_tenant(env: Any) -> str:
    """The tenant of the local environment's managed identity (``env.federation``), where an app that federates
    with it (a federated connection, a migration to federated) is registered: Entra ID, and the stand-in, refuse an
    identity of another tenant (AADSTS700236)."""
    assert env.federation is not None, "the local environment has no managed identity"
    return str(env.federation.tenant_id)


ROTATION_ROLE = "Application.ReadWrite.OwnedBy"


def register_rotatable_app(admin: Any, registry: Any, name: str = "rotated", owner: bool = True,
                           roles: tuple[str, ...] = (ROTATION_ROLE,), tenant_id: str | None = None) -> EntraApp:
    """An app that may rotate its own secret: the Graph role, and its service principal owns it."""
    app = register_app(admin, registry, tenant_id, name=name, roles=roles)
    if owner:
        details = admin.get_app(app.tenant_id, app.client_id)
        admin.add_owner(app.tenant_id, app.client_id, details["servicePrincipalId"])
    return app


def token_works(standin: Any, app: EntraApp, secret: str, scope: str = "https://vault.azure.net/.default") -> bool:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientSecretCredential

    credential = ClientSecretCredential(app.tenant_id, app.client_id, secret, authority=standin.url,
                                        disable_instance_discovery=True)
    try:
        credential.get_token(scope)
        return True
    except ClientAuthenticationError:
        return False
    finally:
        credential.close()
