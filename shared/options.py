"""What the service offers per app: methods, permissions, the OAuth redirect URI and whether it is set up."""

from __future__ import annotations

from typing import Any

from shared.apps import APPS
from shared.settings import Settings


def app_options(settings: Settings) -> list[dict[str, Any]]:
    options = []
    for app in APPS.values():
        oauth = settings.oauth_client(app.oauth_setting_prefix)
        options.append(
            {
                "app": app.id,
                "name": app.name,
                "methods": [method.value for method in app.methods],
                "rotationMethods": [method.value for method in app.rotation_methods],
                "scope": app.scope(settings),
                "permissions": [
                    {"api": p.api, "permission": p.name, "type": p.kind} for p in app.permissions
                ],
                "oauthConfigured": oauth.configured,
                "oauthClientId": oauth.client_id,
                "oauthSettings": [
                    f"{app.oauth_setting_prefix}_CLIENT_ID",
                    f"{app.oauth_setting_prefix}_CLIENT_SECRET",
                ],
                "redirectUri": settings.oauth_redirect_uri,
            }
        )
    return options
