"""What the service offers per app: methods, permissions, the OAuth redirect URI and whether it is set up, and for
the federated method the exact federated identity credential to add to the app registration."""

from __future__ import annotations

from typing import Any

from shared.apps import APPS, METHODS, Method
from shared.federation import LIMITS, SETTINGS, federation_identity, unavailable_reason
from shared.settings import Settings


def federated_option(settings: Settings) -> dict[str, Any]:
    identity = federation_identity(settings)
    # Any name unique on the application will do; a migration names the one it adds for the connection.
    credential = identity.credential("app-connections-federation") if identity is not None else None
    return {
        "available": identity is not None,
        "reason": unavailable_reason(settings),
        "identityClientId": identity.client_id if identity else None,
        "identityPrincipalId": identity.principal_id if identity else None,
        "identityTenantId": identity.tenant_id if identity else None,
        "federatedCredential": credential,
        "limits": list(LIMITS),
        "settings": list(SETTINGS),
        "migrationMethods": [spec.method.value for spec in METHODS.values() if spec.migrates_to_federated],
    }


def app_options(settings: Settings) -> list[dict[str, Any]]:
    federated = federated_option(settings)
    unavailable = {Method.FEDERATED.value: federated["reason"]} if not federated["available"] else {}
    options = []
    for app in APPS.values():
        oauth = settings.oauth_client(app.oauth_setting_prefix)
        options.append(
            {
                "app": app.id,
                "name": app.name,
                "methods": [method.value for method in app.methods],
                "unavailableMethods": {m: why for m, why in unavailable.items() if Method(m) in app.methods},
                "rotationMethods": [method.value for method in app.rotation_methods],
                "scope": app.scope(settings),
                "permissions": [
                    {"api": p.api, "permission": p.name, "type": p.kind} for p in app.permissions
                ],
                "resourceAccess": app.resource_access,
                "oauthConfigured": oauth.configured,
                "oauthClientId": oauth.client_id,
                "oauthSettings": [
                    f"{app.oauth_setting_prefix}_CLIENT_ID",
                    f"{app.oauth_setting_prefix}_CLIENT_SECRET",
                ],
                "redirectUri": settings.oauth_redirect_uri,
                "federated": federated,
            }
        )
    return options
