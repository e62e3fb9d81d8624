"""A local stand-in for Entra ID (token endpoint) and Key Vault (secrets), over TLS on loopback.

``StandIn(port=0, ca_dir=None).start()`` serves in a daemon thread; ``.url``, ``.ca_path`` and ``.admin``
(an :class:`AdminClient`) say where it is and seed it; ``.state`` is the in-process state (one lock).

Modules: ``server`` (TLS, keep-alive, faults, request log), ``routing`` (Request/Response, the
``(method, regex) -> handler`` table), ``state`` (tenants, apps, vault, faults), ``tokens`` (signing key),
``entra``, ``keyvault``, ``admin_api`` (``/_admin/``), ``admin`` (client), ``pki`` (CA, certificates).

Adding a service (e.g. Graph): write ``graph.py`` with ``register(router, ctx)`` adding rows such as
``router.add("POST", r"/v1\\.0/applications/(?P<id>[^/]+)/addPassword", handler)`` and add it to
``server.build_router``. Check bearer tokens with ``req.ctx.signer.verify(token, audience=...)`` (claims carry
``tid``, ``appid``, ``roles``); keep state on ``State`` under ``state.lock`` (``state.extra`` is free).
New token grants: ``entra.register_grant(ctx, "authorization_code", handler)``, reusing
``entra.authenticate_client``, ``entra.issue_access_token``, ``entra.token_response`` and ``entra.fail``.
"""

from localdev.standin.admin import AdminClient, AdminError
from localdev.standin.pki import make_certificate
from localdev.standin.server import StandIn, build_router

__all__ = ["AdminClient", "AdminError", "StandIn", "build_router", "make_certificate"]
