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
Key Vault, write the secret, insert the connection's entity and its name's in one entity-group transaction (the
names' uniqueness), insert its first health check's entity, write the audit record's outcome, answer 201. Its
entities go to tables of its own (``{prefix}FloorAudit``, ``{prefix}FloorConnections``, ``{prefix}FloorHealth``,
which the benchmark creates), so that the service's routes never read them.

Left out, so that each is below what a service can do: validating settings or input, problem documents, retries,
traces, the token's issuer and tenant, the discovery document, the rotation schedule, the stored Key ID's
expiry from Graph, telemetry; the HTTP client is forty lines that keep one connection per origin
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


def _storage() -> tuple[dict[str, str], str]:
    """The connection string's values, and the table endpoint's URL."""
    values = dict(part.split("=", 1) for part in os.environ["AzureWebJobsStorage"].split(";") if "=" in part)  # noqa: SIM112
    return values, values["TableEndpoint"].rstrip("/")


async def _table(method: str, entity_path: str, body: dict[str, Any] | bytes | None = None,
                 content_type: str = "application/json") -> tuple[int, bytes]:
    """A request to the service's table ``entity_path`` (e.g. ``Connections(PartitionKey='a',RowKey='b')``), or to
    ``$batch`` (``body`` then the multipart bytes, with their ``content_type``)."""
    values, url = _storage()
    endpoint = urlsplit(url)
    prefix = "" if entity_path == "$batch" else os.environ["STATE_TABLE_PREFIX"]
    path = f"{endpoint.path}/{prefix}{entity_path}"
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    content_type = content_type if body is not None else ""
    signed = f"{method}\n\n{content_type}\n{date}\n/{values['AccountName']}{path}".encode()
    mac = hmac.new(base64.b64decode(values["AccountKey"]), signed, hashlib.sha256)
    headers = {"x-ms-date": date, "x-ms-version": "2019-02-02", "DataServiceVersion": "3.0",
               "Accept": "application/json;odata=nometadata",
               "Authorization": f"SharedKey {values['AccountName']}:{base64.b64encode(mac.digest()).decode()}"}
    if body is not None:
        headers |= {"Content-Type": content_type, "Prefer": "return-no-content"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return await _send(method, f"{endpoint.scheme}://{endpoint.netloc}{path}", headers, data)


async def _insert_together(table: str, entities: list[dict[str, Any]]) -> bool:
    """Insert ``entities`` (one partition) in one entity-group transaction; whether every insert was applied."""
    _, url = _storage()
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    parts = [f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
             f"POST {url}/{os.environ['STATE_TABLE_PREFIX']}{table} HTTP/1.1\r\nContent-Type: application/json\r\n"
             f"Accept: application/json;odata=nometadata\r\nPrefer: return-no-content\r\nDataServiceVersion: 3.0\r\n"
             f"\r\n{json.dumps(entity)}\r\n" for entity in entities]
    body = (f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n{''.join(parts)}"
            f"--{changeset}--\r\n--{batch}--\r\n").encode()
    status, answer = await _table("POST", "$batch", body, f"multipart/mixed; boundary={batch}")
    return status == 202 and answer.count(b"HTTP/1.1 204") == len(entities)


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
    name = str(req.get_json()["name"])
    inserted = await _insert_together("FloorConnections", [
        {"PartitionKey": app_id, "RowKey": connection_id, "Name": name},
        {"PartitionKey": app_id, "RowKey": f"~name~{name.lower()}", "ConnectionId": connection_id}])
    due = f"{time.time():017.6f}_{connection_id}"
    indexed = await _table("POST", "FloorHealth", {"PartitionKey": "due", "RowKey": due, "App": app_id,
                                                   "ConnectionId": connection_id})
    outcome = await _table("POST", "FloorAudit", {"PartitionKey": "floor", "RowKey": str(uuid.uuid4()),
                                                  "Action": "connection.create", "Outcome": "succeeded",
                                                  "ConnectionId": connection_id})
    if (audited[0], stored[0], inserted, indexed[0], outcome[0]) != (204, 200, True, 204, 204):
        return func.HttpResponse(f"{audited[0]} {stored[0]} {inserted} {indexed[0]} {outcome[0]}", status_code=502)
    return func.HttpResponse(json.dumps({"appConnection": {"id": connection_id}}), status_code=201,
                             mimetype="application/json")
