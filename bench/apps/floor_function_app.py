"""The floor of a cold instance's first request: a Functions app whose functions do only what any service must do
to answer an authenticated read, or a create of a connection, on a cold instance, and nothing else.

``floor`` (a read of one connection):

1. fetch the tenant's signing keys (its ``jwks_uri``, straight: no discovery document) over TLS;
2. check the bearer token's RS256 signature with ``cryptography`` (the vetted implementation), its audience and
   its expiry;
3. GET the entity from Table Storage, signed with the storage account key (SharedKey);
4. answer its JSON.

``floor_create`` (a create, as ``../shared/DESIGN.md`` asks of every one): 1 and 2, then acquire a token with the
given credentials (the validation), write the audit record (before the change), acquire the service's token for
Key Vault, write the secret, insert the connection's entity, answer 201. Its entities go to tables of its own
(``{prefix}FloorAudit``, ``{prefix}FloorConnections``, which the benchmark creates), so that the service's
routes never read them.

Left out, so that each is below what a service can do: validating settings or input, problem documents, retries,
traces, the token's issuer and tenant, the discovery document, the name index and its entity-group transaction,
the health and rotation indexes, telemetry; the HTTP client is forty lines that keep one connection per origin
open, with no timeouts. ``bench/cold_start.py`` runs it beside the bare function app, so that the floor's ratio
to the bare function says how much of the issue's 1.3 x a service has left for its own work. Not part of the
service: it is never deployed, and nothing in ``shared`` imports it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import time
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

import azure.functions as func
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_open: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def _send(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request on the origin's kept-alive connection (opened on first use)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if origin not in _open:
        tls = ssl.create_default_context() if parts.scheme == "https" else None
        _open[origin] = await asyncio.open_connection(parts.hostname, parts.port, ssl=tls)
    reader, writer = _open[origin]
    lines = "".join(f"{name}: {value}\r\n" for name, value in {**headers, "Content-Length": len(body)}.items())
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{lines}\r\n".encode() + body)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        answer = b""
        while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
            answer += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        answer = await reader.readexactly(int(fields.get("content-length", "0")))
    return int(head[0].split(" ", 2)[1]), answer


async def _claims(authorization: str) -> dict[str, Any]:
    header, payload, signature = authorization.removeprefix("Bearer ").split(".")
    authority = os.environ["AZURE_AUTHORITY_HOST"].rstrip("/")
    status, body = await _send("GET", f"{authority}/{os.environ['AUTH_TENANT_ID']}/discovery/v2.0/keys", {})
    if status != 200:
        raise PermissionError("no signing keys")
    kid = json.loads(_b64url(header))["kid"]
    jwk = next(k for k in json.loads(body)["keys"] if k.get("kid") == kid)
    key = rsa.RSAPublicNumbers(int.from_bytes(_b64url(jwk["e"]), "big"),
                               int.from_bytes(_b64url(jwk["n"]), "big")).public_key()
    key.verify(_b64url(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    claims: dict[str, Any] = json.loads(_b64url(payload))
    audience = os.environ["AUTH_AUDIENCE"]
    if claims.get("aud") not in (audience, f"api://{audience}") or claims.get("exp", 0) <= time.time():
        raise PermissionError("not a token for this API")
    return claims


async def _token(tenant: str, client_id: str, secret: str, scope: str) -> str:
    authority = os.environ["AZURE_AUTHORITY_HOST"].rstrip("/")
    form = urlencode({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
                      "scope": scope}).encode()
    status, body = await _send("POST", f"{authority}/{tenant}/oauth2/v2.0/token",
                               {"Content-Type": "application/x-www-form-urlencoded"}, form)
    if status != 200:
        raise PermissionError("credentials refused")
    return str(json.loads(body)["access_token"])


async def _table(method: str, entity_path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """A request to the service's table ``entity_path`` (e.g. ``Connections(PartitionKey='a',RowKey='b')``)."""
    values = dict(part.split("=", 1) for part in os.environ["AzureWebJobsStorage"].split(";") if "=" in part)  # noqa: SIM112
    endpoint = urlsplit(values["TableEndpoint"].rstrip("/"))
    path = f"{endpoint.path}/{os.environ['STATE_TABLE_PREFIX']}{entity_path}"
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    content_type = "application/json" if body is not None else ""
    signed = f"{method}\n\n{content_type}\n{date}\n/{values['AccountName']}{path}".encode()
    mac = hmac.new(base64.b64decode(values["AccountKey"]), signed, hashlib.sha256)
    headers = {"x-ms-date": date, "x-ms-version": "2019-02-02", "DataServiceVersion": "3.0",
               "Accept": "application/json;odata=nometadata",
               "Authorization": f"SharedKey {values['AccountName']}:{base64.b64encode(mac.digest()).decode()}"}
    if body is not None:
        headers |= {"Content-Type": content_type, "Prefer": "return-no-content"}
    return await _send(method, f"{endpoint.scheme}://{endpoint.netloc}{path}", headers,
                       json.dumps(body).encode() if body is not None else b"")


@app.function_name("floor")
@app.route(route="floor/{app}/{id}", methods=["GET"])
async def floor(req: func.HttpRequest) -> func.HttpResponse:
    try:
        await _claims(req.headers.get("authorization", ""))
    except (InvalidSignature, PermissionError, ValueError, KeyError, StopIteration):
        return func.HttpResponse(status_code=401)
    status, body = await _table("GET", f"Connections(PartitionKey='{req.route_params['app']}',"
                                       f"RowKey='{req.route_params['id']}')")
    return func.HttpResponse(body, status_code=status, mimetype="application/json")


@app.function_name("floor_create")
@app.route(route="floor/{app}", methods=["POST"])
async def floor_create(req: func.HttpRequest) -> func.HttpResponse:
    try:
        claims = await _claims(req.headers.get("authorization", ""))
        given = req.get_json()["credentials"]
        await _token(given["tenantId"], given["clientId"], given["clientSecret"], "https://vault.azure.net/.default")
    except (InvalidSignature, PermissionError, ValueError, KeyError, StopIteration):
        return func.HttpResponse(status_code=401)
    app_id, connection_id = req.route_params["app"], str(uuid.uuid4())
    audited = await _table("POST", "FloorAudit", {"PartitionKey": "floor", "RowKey": str(uuid.uuid4()),
                                             "Actor": claims.get("oid", ""), "Action": "connection.create",
                                             "ConnectionId": connection_id})
    token = await _token(os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"],
                         os.environ["AZURE_CLIENT_SECRET"], "https://vault.azure.net/.default")
    vault = os.environ["KEY_VAULT_URL"].rstrip("/")
    stored = await _send("PUT", f"{vault}/secrets/floor-{connection_id}?api-version=7.4",
                         {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                         json.dumps({"value": json.dumps(given), "contentType": "application/json"}).encode())
    inserted = await _table("POST", "FloorConnections", {"PartitionKey": app_id, "RowKey": connection_id,
                                                    "Name": req.get_json()["name"]})
    if (audited[0], stored[0], inserted[0]) != (204, 200, 204):
        return func.HttpResponse(f"{audited[0]} {stored[0]} {inserted[0]}", status_code=502)
    return func.HttpResponse(json.dumps({"appConnection": {"id": connection_id}}), status_code=201,
                             mimetype="application/json")
