"""Graph's certificate self-rotation (``addKey``/``removeKey`` with proof of possession), ``PATCH`` of
``keyCredentials``, and reading app management policies; the admin routes that set the policies.

Graph v1.0 routes (an app addressed as ``/applications/{objectId}`` or ``/applications(appId='{appId}')``):

* ``POST .../addKey`` ``{"keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify", "key": base64 DER
  certificate, "displayName"?, "startDateTime"?, "endDateTime"?}, "passwordCredential": null, "proof": JWT}``
  -> 200 the new ``keyCredential`` (``key`` null). The start and end default to the certificate's validity.
* ``POST .../removeKey`` ``{"keyId", "proof"}`` -> 204. Removing the key that signed the proof is allowed (the
  caller's responsibility, as in Graph).
* The proof (as Microsoft documents for addKey/removeKey): a JWT signed by the key of one of the app's
  certificates valid now (found by ``x5t``, ``x5t#S256`` or ``kid`` = SHA-1 thumbprint hex; RS256 or PS256:
  an RSA key), ``aud`` ``00000002-0000-0000-c000-000000000000``, ``iss`` the application's object id, ``nbf`` and
  ``exp`` with ``exp`` at most 10 minutes after ``nbf``, now within them (five minutes of skew). No proof: 400
  ``Request_BadRequest``; a proof that is not a JWT, does not verify or has wrong claims: 401
  ``Authentication_MissingOrMalformed`` "Access Token missing or malformed." (Graph's answer reported for a
  proof with the wrong ``aud``; the reason is in the request log's ``proofError``). An app with no certificate
  valid now cannot use these actions (400).
* The caller: the application itself (a token whose ``appid`` is the app's, no Graph permission needed), or a
  caller that may write the app (Application.ReadWrite.All, or ReadWrite.OwnedBy as an owner).
* ``PATCH /applications/{id}`` ``{"keyCredentials": [...]}``: the app's certificates become exactly this list;
  an entry naming an existing ``keyId`` without ``key`` keeps that certificate, an entry with ``key`` adds one.
  Needs write permission. Other properties answer 400 (the stand-in patches only ``keyCredentials``). 204.
* ``addKey`` and ``PATCH`` check new certificates' lifetime (end minus start) against
  ``asymmetricKeyLifetime`` (:mod:`localdev.standin.policies`): 400 ``CredentialInvalidLifetimeAsPerAppPolicy``.
* ``GET /v1.0/policies/defaultAppManagementPolicy`` (needs Policy.Read.All, Policy.Read.ApplicationConfiguration
  or Policy.ReadWrite.ApplicationConfiguration) and ``GET /applications/{id}/appManagementPolicies`` (needs
  what reading the app needs; an app may read its own): ``{"value": [appManagementPolicy...]}``.

Admin: ``PUT /_admin/tenants/{t}/app-management-policies/default``, ``POST``/``GET
/_admin/tenants/{t}/app-management-policies`` (see :mod:`localdev.standin.policies` for the bodies).
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localdev.standin import graph, policies
from localdev.standin.admin_api import _body, _guard, _strings
from localdev.standin.context import Context
from localdev.standin.graph import Caller
from localdev.standin.routing import HttpError, Request, Response, Router, empty_response, json_response
from localdev.standin.state import App, KeyCredential, StateError, iso, parse_iso, utcnow

GRAPH_AAD_AUDIENCE = "00000002-0000-0000-c000-000000000000"
PROOF_MAX_LIFETIME = 600  # seconds between nbf and exp
PROOF_SKEW = 300
PROOF_ALGORITHMS = ("RS256", "PS256")
POLICY_READ_ROLES = frozenset(
    {"Policy.Read.All", "Policy.Read.ApplicationConfiguration", "Policy.ReadWrite.ApplicationConfiguration"}
)


def _bad(req: Request, message: str) -> HttpError:
    return graph.graph_error(req, 400, "Request_BadRequest", message)


def _unauthorized(req: Request, reason: str) -> HttpError:
    """Graph's answer to a proof it refuses (seen for a wrong ``aud``): 401 ``Authentication_MissingOrMalformed``
    "Access Token missing or malformed."; why is only in the request log (``proofError``)."""
    req.note["proofError"] = reason
    return graph.graph_error(req, 401, "Authentication_MissingOrMalformed", "Access Token missing or malformed.")


def _may_roll_keys(caller: Caller, app: App) -> bool:
    return caller.app_id == app.app_id or caller.may_write(app)


def _proof_key(app: App, header: dict[str, Any]) -> KeyCredential | None:
    s256 = str(header.get("x5t#S256") or "").rstrip("=")
    sha1 = str(header.get("x5t") or "").rstrip("=")
    kid = str(header.get("kid") or "").upper()
    for key in app.keys:
        t = key.thumbprints
        if (s256 and t.x5t_s256 == s256) or (sha1 and t.x5t == sha1) or (kid and t.sha1_hex.upper() == kid):
            return key
    return None


def check_proof(req: Request, app: App, proof: Any) -> None:
    """Raise unless ``proof`` proves possession of a current certificate of ``app`` (call under the lock)."""
    now = utcnow()
    if not any(k.start <= now <= k.end for k in app.keys):
        raise _bad(req, "The application has no valid certificate: addKey and removeKey need one to sign the proof.")
    if not isinstance(proof, str) or not proof:
        raise _bad(req, "Invalid value specified for property 'proof'.")
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError as exc:
        raise _unauthorized(req, f"the proof is not a JWT ({exc}).") from exc
    alg = str(header.get("alg"))
    if alg not in PROOF_ALGORITHMS:
        raise _unauthorized(req, f"the algorithm '{alg}' is not supported.")
    key = _proof_key(app, header)
    if key is None or not key.start <= now <= key.end:
        raise _unauthorized(req, "it is not signed by a current certificate of the application.")
    if not isinstance(key.public_key, rsa.RSAPublicKey):
        raise _unauthorized(req, f"the certificate's key does not match the algorithm {alg}.")
    try:
        claims = jwt.decode(
            proof,
            key.public_key,
            algorithms=[alg],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise _unauthorized(req, "the signature does not verify with the certificate.") from exc
    if claims.get("aud") != GRAPH_AAD_AUDIENCE:
        raise _unauthorized(req, f"the audience must be {GRAPH_AAD_AUDIENCE}.")
    if str(claims.get("iss", "")).lower() != app.object_id:
        raise _unauthorized(req, "the issuer must be the application's object id.")
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if not isinstance(nbf, int | float) or not isinstance(exp, int | float):
        raise _unauthorized(req, "nbf and exp are required.")
    if exp - nbf > PROOF_MAX_LIFETIME or exp <= nbf:
        raise _unauthorized(req, "exp must be after nbf and at most 10 minutes later.")
    clock = time.time()
    if nbf - PROOF_SKEW > clock or exp + PROOF_SKEW < clock:
        raise _unauthorized(req, "it is not within its valid time range.")
    req.note["proofKeyId"] = key.key_id


def _certificate(req: Request, raw: Any) -> x509.Certificate:
    if not isinstance(raw, str) or not raw:
        raise _bad(req, "Invalid value specified for property 'key' of resource 'KeyCredential'.")
    try:
        return x509.load_der_x509_certificate(base64.b64decode(raw, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise _bad(req, "Invalid value specified for property 'key' of resource 'KeyCredential'.") from exc


def _new_key(req: Request, app: App, entry: dict[str, Any]) -> KeyCredential:
    """A key credential from Graph's ``keyCredential`` JSON, checked against the policies, not yet added."""
    if entry.get("type", "AsymmetricX509Cert") != "AsymmetricX509Cert" or entry.get("usage", "Verify") != "Verify":
        raise _bad(req, "The stand-in accepts keyCredentials of type 'AsymmetricX509Cert' and usage 'Verify' only.")
    cert = _certificate(req, entry.get("key"))
    try:
        start = parse_iso(str(entry["startDateTime"])) if entry.get("startDateTime") else cert.not_valid_before_utc
        end = parse_iso(str(entry["endDateTime"])) if entry.get("endDateTime") else cert.not_valid_after_utc
    except ValueError as exc:
        raise _bad(req, "Invalid value specified for property 'endDateTime' of resource 'KeyCredential'.") from exc
    refused = policies.violation(req.ctx.state, app, "keyCredentials", start, end)
    if refused is not None:
        raise graph.policy_error(req, refused)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    display = entry.get("displayName")
    try:
        # Built by the state (which parses and fingerprints it), then taken back off: the caller decides.
        added = req.ctx.state.add_certificate(app.tenant_id, app.app_id, pem, None if display is None else str(display))
    except StateError as exc:
        raise _bad(req, str(exc)) from exc
    app.keys.remove(added)
    added.start, added.end = start, end
    if entry.get("keyId"):
        try:
            added.key_id = str(uuid.UUID(str(entry["keyId"])))
        except ValueError as exc:
            raise _bad(req, "Invalid value specified for property 'keyId' of resource 'KeyCredential'.") from exc
    return added


def _key_json(key: KeyCredential) -> dict[str, Any]:
    return {
        "customKeyIdentifier": base64.b64encode(bytes.fromhex(key.thumbprints.sha1_hex)).decode("ascii"),
        "displayName": key.display_name,
        "endDateTime": iso(key.end),
        "key": None,
        "keyId": key.key_id,
        "startDateTime": iso(key.start),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    }


def add_key(req: Request) -> Response:
    caller = graph.authorize(req)
    body = graph._json_body(req)
    entry = body.get("keyCredential")
    if not isinstance(entry, dict):
        raise _bad(req, "Invalid value specified for property 'keyCredential'.")
    if body.get("passwordCredential") is not None:
        raise _bad(req, "The stand-in's addKey does not add password credentials.")
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, _may_roll_keys)
        check_proof(req, app, body.get("proof"))
        key = _new_key(req, app, entry)
        app.keys.append(key)
        req.note["keyId"] = key.key_id
        payload = {"@odata.context": graph._context(req, "microsoft.graph.keyCredential"), **_key_json(key)}
    return graph.graph_response(req, 200, payload)


def remove_key(req: Request) -> Response:
    caller = graph.authorize(req)
    body = graph._json_body(req)
    try:
        key_id = str(uuid.UUID(str(body.get("keyId"))))
    except ValueError as exc:
        raise _bad(req, "Invalid value specified for property 'keyId' of resource 'removeKey'.") from exc
    req.note["keyId"] = key_id
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, _may_roll_keys)
        check_proof(req, app, body.get("proof"))
        if not any(k.key_id == key_id for k in app.keys):
            raise _bad(req, f"No key credential found with keyId '{key_id}'.")
        app.keys = [k for k in app.keys if k.key_id != key_id]
    return empty_response(204, {k: v for k, v in graph._headers(req).items() if k != "Content-Type"})


def patch_application(req: Request) -> Response:
    caller = graph.authorize(req)
    body = graph._json_body(req)
    unknown = set(body) - {"keyCredentials"}
    if unknown:
        raise _bad(req, f"The stand-in patches keyCredentials only, not {sorted(unknown)}.")
    entries = body.get("keyCredentials")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _bad(req, "Invalid value specified for property 'keyCredentials'.")
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, Caller.may_write)
        current = {k.key_id: k for k in app.keys}
        result: list[KeyCredential] = []
        for entry in entries:
            key_id = str(entry.get("keyId") or "").lower()
            if entry.get("key") is None:
                if key_id not in current:
                    raise _bad(req, f"Key credential '{key_id}' does not exist; a new one needs its 'key'.")
                result.append(current[key_id])
            else:
                result.append(_new_key(req, app, entry))
        ids = [k.key_id for k in result]
        if len(set(ids)) != len(ids):
            raise _bad(req, "keyCredentials names a keyId twice.")
        app.keys = result
    return empty_response(204, {k: v for k, v in graph._headers(req).items() if k != "Content-Type"})


def default_policy(req: Request) -> Response:
    caller = graph.authorize(req)
    if not caller.roles & POLICY_READ_ROLES:
        raise graph._denied(req)
    state = req.ctx.state
    with state.lock:
        tenant = state.tenants.get(caller.tenant_id)
        if tenant is None:
            raise graph._denied(req)
        payload = {
            "@odata.context": graph._context(req, "policies/defaultAppManagementPolicy/$entity"),
            **policies.default_policy(tenant),
        }
    return graph.graph_response(req, 200, payload)


def app_policies(req: Request) -> Response:
    caller = graph.authorize(req)
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, Caller.may_read)
        tenant = state.require_tenant(app.tenant_id)
        items = [dict(p) for p in policies.app_policies(tenant, app)]
    context = graph._context(req, "appManagementPolicies")
    return graph.graph_response(req, 200, {"@odata.context": context, "value": items})


# --- admin ------------------------------------------------------------------------------------------------------


def admin_set_default(req: Request) -> Response:
    body = _body(req)
    state = req.ctx.state
    restrictions = policies.parse_restrictions(body.get("applicationRestrictions"))
    with state.lock:
        tenant = state.require_tenant(req.params["tenant"])
        tenant.default_app_management_policy = {
            "isEnabled": bool(body.get("isEnabled", True)),
            "applicationRestrictions": restrictions,
        }
        return json_response(200, policies.default_policy(tenant))


def admin_add_policy(req: Request) -> Response:
    body = _body(req)
    state = req.ctx.state
    restrictions = policies.parse_restrictions(body.get("restrictions"))
    app_ids = _strings(body.get("appIds"), "appIds")
    with state.lock:
        tenant = state.require_tenant(req.params["tenant"])
        apps = [state.require_app(tenant.tenant_id, a) for a in app_ids]
        policy_id = str(uuid.uuid4())
        policy: dict[str, Any] = {
            "id": policy_id,
            "displayName": str(body.get("displayName") or "app management policy"),
            "description": str(body.get("description") or ""),
            "isEnabled": bool(body.get("isEnabled", True)),
            "restrictions": restrictions,
        }
        tenant.app_management_policies[policy_id] = policy
        for app in apps:
            app.management_policy_ids.append(policy_id)
        return json_response(201, policy)


def admin_list_policies(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        tenant = state.require_tenant(req.params["tenant"])
        return json_response(200, {"policies": list(tenant.app_management_policies.values())})


def register(router: Router, ctx: Context) -> None:
    del ctx
    for address in (graph.APP_BY_APP_ID, graph.APP_BY_ID):
        router.add("POST", address + "/addKey", add_key)
        router.add("POST", address + "/removeKey", remove_key)
        router.add("PATCH", address, patch_application)
        router.add("GET", address + "/appManagementPolicies/?", app_policies)
    router.add("GET", r"/v1\.0/policies/defaultAppManagementPolicy/?", default_policy)
    prefix = "/_admin/tenants/(?P<tenant>[^/]+)/app-management-policies"
    router.add("PUT", prefix + "/default", _guard(admin_set_default))
    router.add("POST", prefix, _guard(admin_add_policy))
    router.add("GET", prefix, _guard(admin_list_policies))
