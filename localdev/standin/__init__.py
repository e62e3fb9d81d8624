"""A local stand-in for Entra ID, Microsoft Graph (application passwords) and Key Vault (secrets), and webhook
receivers for the service's notifications, over TLS on loopback, with an admin API to seed it, inspect what it
received and inject faults.

``StandIn(port=0, ca_dir=None).start()`` serves in a daemon thread; ``.url``, ``.ca_path`` and ``.admin``
(an :class:`AdminClient`) say where it is and seed it; ``.state`` is the in-process state (one lock). All
services share the one URL: Entra under ``/{tenant}/...``, Graph under ``/v1.0/``, Key Vault under
``/secrets`` and ``/deletedsecrets``, webhook receivers at ``/webhooks/{name}`` (``POST``, any name: a
``NOTIFY_WEBHOOK_URL`` of ``{url}/webhooks/{name}``), the admin API under ``/_admin/``.

Modules: ``server`` (TLS, keep-alive, fault rules and latency, request log, connection counters),
``routing`` (Request/Response, the ``(method, regex) -> handler`` table), ``state`` (tenants, apps and their
credentials, vault, fault rules, request log), ``context`` (what handlers reach), ``tokens`` (signing key),
``entra`` (discovery, JWKS, token endpoint: client credentials with a secret or a certificate),
``oauth`` (authorize endpoint, authorization_code and refresh_token grants, test users), ``apis`` (API
registrations with app roles, role assignments to users and client apps, for ``api://{appId}/.default``
tokens that carry ``roles``), ``graph``
(applications, addPassword/removePassword, Graph-shaped fault rules), ``keyvault`` (secrets data plane),
``webhooks`` (receivers that record every delivery: headers, raw body, parsed JSON; per-receiver failures),
``admin_api`` (``/_admin/``), ``admin`` (its client), ``pki`` (CA, server and client certificates),
``cli`` (``python -m localdev.standin``).

Adding a service: write a module with ``register(router, ctx)`` adding rows such as
``router.add("POST", r"/v1\\.0/applications/(?P<id>[^/]+)/addPassword", handler)`` (as ``graph.py`` does) and
add it to ``server.build_router``. Check bearer tokens with ``req.ctx.signer.verify(token, audience=...)``
(claims carry ``tid``, ``appid``, ``roles``); keep state on ``State`` under ``state.lock`` (a service's own
state goes in ``state.extra``, which ``reset`` clears, as Graph's call counts and OAuth's users do).
New token grants: ``entra.register_grant(ctx, grant_type, handler)`` (``oauth.py`` adds ``authorization_code``
and ``refresh_token`` so), reusing ``entra.authenticate_client``, ``entra.issue_access_token``,
``entra.token_response`` and ``entra.fail``.
"""

from localdev.standin.admin import AdminClient, AdminError
from localdev.standin.pki import make_certificate
from localdev.standin.server import StandIn, build_router

__all__ = ["AdminClient", "AdminError", "StandIn", "build_router", "make_certificate"]
