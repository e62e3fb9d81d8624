"""Request models (validated with pydantic) and the mapping of their errors to field errors.

Validation messages are built from field names and rules only: the value a caller sent is
never echoed, so a misplaced secret cannot come back in an error.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.json_schema import SkipJsonSchema

from shared.apps import APPS, Method
from shared.errors import FieldError, InvalidRequest
from shared.fields import DESCRIPTION_MAX, GUID_RE, HHMM_PATTERN, NAME_RE, pointer_part
from shared.fields import guid as _guid
from shared.fields import name as _name
from shared.fields import no_controls as _no_controls
from shared.records import CONNECTION_STATUSES, HEALTH_STATUSES, ROTATION_STATUSES, TRIGGERS

MAX_PEM_CHARS = 16_384
M = TypeVar("M", bound=BaseModel)

# What the rules check, said in the document too (json_schema_extra: the rules of shared.fields still decide, with
# their own messages), so a client generated from it builds what the service takes.
Guid = Annotated[str, AfterValidator(_guid), Field(json_schema_extra={"format": "uuid", "pattern": GUID_RE.pattern})]
Name = Annotated[str, AfterValidator(_name),
                 Field(json_schema_extra={"pattern": NAME_RE.pattern, "minLength": 1, "maxLength": 64})]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX), AfterValidator(_no_controls)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_no_controls)]
Pem = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PEM_CHARS), AfterValidator(_no_controls)]


def _whole(value: Any) -> Any:
    """A JSON number without a fractional part as the integer it is (``30.0`` is an integer in JSON Schema 2020-12,
    as the document says): strict validation takes it then; a fraction, a string or a boolean is still refused."""
    return int(value) if type(value) is float and value.is_integer() else value



# defer_build: a model's validator is built when it is first used, not at import, so a request builds only the
# models it validates (the response models serve the OpenAPI document and tests).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False, defer_build=True)


class ClientSecretCredentialsIn(_Strict):
    tenantId: Guid
    clientId: Guid
    clientSecret: Secret = Field(repr=False)  # never shown, whatever prints the model
    clientSecretKeyId: Guid | None = None


class CertificateCredentialsIn(_Strict):
    tenantId: Guid
    clientId: Guid
    certificateBody: Pem
    privateKey: Pem = Field(repr=False)


class FederatedCredentialsIn(_Strict):
    """Nothing secret: the application signs in with the service's managed identity's token as its assertion."""

    tenantId: Guid
    clientId: Guid


class ClientSecretKeyIdIn(_Strict):
    """A ``PATCH``'s ``credentials`` with the Key ID alone, on a client-secret connection: "the stored secret's Key ID
    is this". Nothing secret is sent or changed; the Key ID must be that of the secret stored (checked against the
    application as a given Key ID is), and is what a rotation revokes once it has replaced that secret."""

    clientSecretKeyId: Guid


CredentialsIn = ClientSecretCredentialsIn | CertificateCredentialsIn | FederatedCredentialsIn

CREDENTIAL_MODELS: dict[Method, type[_Strict]] = {
    Method.CLIENT_SECRET: ClientSecretCredentialsIn,
    Method.CERTIFICATE: CertificateCredentialsIn,
    Method.FEDERATED: FederatedCredentialsIn,
}


class MigrateToFederatedIn(_Strict):
    """``POST .../migrate-to-federated``: ``revokeOriginal`` also removes the credential the user gave (the
    client secret's password, or the certificate's key) once the federated sign-in has worked."""

    revokeOriginal: bool = False


class RotateAtUtcIn(_Strict):
    hours: Annotated[int, Field(ge=0, le=23), BeforeValidator(_whole)]
    minutes: Annotated[int, Field(ge=0, le=59), BeforeValidator(_whole)]


def _time_of_day(value: str) -> str:
    from shared.rotation.schedule import parse_hhmm  # checked with the other fields: every field error at once

    parse_hhmm(value)
    return value


def _time_zone(value: str) -> str:
    from shared.rotation.schedule import zone

    zone(value)
    return value


TimeOfDay = Annotated[str, AfterValidator(_time_of_day), Field(json_schema_extra={"pattern": HHMM_PATTERN})]


class RotationIn(_Strict):
    """``{rotationInterval, rotateAtUtc: {hours, minutes}}`` as the reference has it, or
    ``{rotationInterval, rotateAt: "HH:MM", timeZone}`` for a local time of day."""

    rotationInterval: Annotated[int, Field(ge=1, le=365), BeforeValidator(_whole)]
    rotateAtUtc: RotateAtUtcIn | None = None
    rotateAt: TimeOfDay | None = None
    timeZone: Annotated[str, AfterValidator(_time_zone)] | None = None


class CreateConnectionIn(_Strict):
    name: Name
    description: Description | None = None
    method: Annotated[str, Field(json_schema_extra={"enum": [m.value for m in Method if m is not Method.OAUTH]})]
    credentials: Annotated[dict[str, Any], Field(repr=False)]  # a secret or private key: never in a repr
    isAutoRotationEnabled: bool = False
    rotation: RotationIn | None = None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class UpdateConnectionIn(_Strict):
    # Optional, never null (a connection needs a name: the update refuses ``null``), so the document says a string.
    name: Name | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    description: Description | None = None
    credentials: dict[str, Any] | None = Field(default=None, repr=False)
    isAutoRotationEnabled: bool | None = None
    rotation: RotationIn | None = None


def _pointer(loc: tuple[int | str, ...], prefix: str) -> str:
    return prefix + "".join(f"/{pointer_part(part)}" for part in loc)


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "string_too_long": "is too long",
    "string_too_short": "must not be empty",
    "greater_than_equal": "is too small",
    "less_than_equal": "is too large",
    "int_from_float": "must be an integer",
}


def field_errors(error: ValidationError, prefix: str = "") -> list[FieldError]:
    """Turn a pydantic error into field errors without echoing any input value."""
    result = []
    for item in error.errors(include_input=False, include_url=False):
        kind = item["type"]
        if kind == "value_error":
            message = str(item["msg"]).removeprefix("Value error, ")
        elif kind in {"greater_than_equal", "less_than_equal"}:
            ctx = item.get("ctx") or {}
            limit = ctx.get("ge", ctx.get("le"))
            message = f"must be at {'least' if kind == 'greater_than_equal' else 'most'} {limit}"
        elif kind in {"string_too_long", "string_too_short"}:
            limit = (item.get("ctx") or {}).get("max_length" if kind == "string_too_long" else "min_length")
            message = _MESSAGES[kind] + (f" (limit {limit} characters)" if kind == "string_too_long" else "")
        else:
            message = _MESSAGES.get(kind, str(item["msg"]))
        result.append(FieldError(_pointer(tuple(item["loc"]), prefix), message))
    return result


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate ``data`` against ``model``; an invalid body raises a 400 with field errors."""
    if not isinstance(data, dict):
        raise InvalidRequest(
            "The body must be a JSON object.", errors=[FieldError(prefix or "", "must be an object")]
        )
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidRequest("Some fields are not valid.", errors=field_errors(error, prefix)) from None


def parse_method(app_methods: tuple[Method, ...], raw: str, pointer: str = "/method") -> Method:
    try:
        method = Method(raw)
    except ValueError:
        method = None
    if method is None or method not in app_methods:
        allowed = ", ".join(m.value for m in app_methods)
        raise InvalidRequest(
            "Unknown method.", errors=[FieldError(pointer, f"must be one of: {allowed}")]
        )
    return method


def parse_credentials(method: Method, data: Any) -> CredentialsIn:
    model = CREDENTIAL_MODELS.get(method)
    if model is None:
        raise InvalidRequest(
            f"Credentials for the {method.value} method are not given in this request.",
            errors=[FieldError("/method", f"{method.value} connections are created through their own flow")],
        )
    parsed = parse_model(model, data, "/credentials")
    assert isinstance(parsed, ClientSecretCredentialsIn | CertificateCredentialsIn | FederatedCredentialsIn)
    return parsed


def parse_key_id_alone(method: Method, data: Any) -> ClientSecretKeyIdIn | None:
    """A ``PATCH``'s ``credentials`` that names ``clientSecretKeyId`` and nothing else, parsed (None: anything else,
    which is checked as the method's credentials). Only a client-secret connection has a client secret's Key ID."""
    if not (isinstance(data, dict) and set(data) == {"clientSecretKeyId"}):
        return None
    if method is not Method.CLIENT_SECRET:
        raise InvalidRequest(
            f"Only a client-secret connection has a client secret's Key ID; this one uses the {method.value} method.",
            errors=[FieldError("/credentials/clientSecretKeyId", "needs the client-secret method")])
    return parse_model(ClientSecretKeyIdIn, data, "/credentials")


# -- Response models ---------------------------------------------------------------------------------
# What the service answers, field for field (``to_response``, ``state_response``, ``RotationEvent.as_dict``,
# ``app_options``, ``ServiceError.to_problem``). They generate the OpenAPI document (``shared/openapi.py``),
# and the tests check every answer against them; ``extra="forbid"`` keeps them exact.


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


# Strings of a closed set, said in the document (``enum``).
ConnectionStatus = Annotated[str, Field(json_schema_extra={"enum": list(CONNECTION_STATUSES)})]
RotationStatus = Annotated[str, Field(json_schema_extra={"enum": list(ROTATION_STATUSES)})]
HealthStatus = Annotated[str, Field(json_schema_extra={"enum": list(HEALTH_STATUSES)})]
AppId = Annotated[str, Field(json_schema_extra={"enum": sorted(APPS)})]
MethodName = Annotated[str, Field(json_schema_extra={"enum": [m.value for m in Method]})]
RotationTrigger = Annotated[str, Field(json_schema_extra={"enum": list(TRIGGERS)})]


class ConnectionCredentialsOut(_Out):
    """Never a secret: the tenant and, but for OAuth connections, the client ID."""

    tenantId: str
    clientId: str | None = None


class RotateAtUtcOut(_Out):
    hours: int
    minutes: int


class RotationOut(_Out):
    """``rotateAtUtc`` as the reference's clients read it back: for a schedule in UTC, else null (a local time of
    day in another time zone has no one UTC time)."""

    enabled: bool
    rotationInterval: int | None
    rotateAt: str | None
    timeZone: str | None
    rotateAtUtc: RotateAtUtcOut | None
    status: RotationStatus | None
    lastRotatedAt: Timestamp | None
    lastRotationAttemptedAt: Timestamp | None
    lastRotationMessage: str | None
    nextRotationAt: Timestamp | None
    rotationId: str | None


class HealthOut(_Out):
    """``healthy``, ``expiring`` (within EXPIRY_WARNING_DAYS of expiry), ``failing`` (Entra refuses the credential),
    ``expired`` or ``unknown`` (not checked yet); when, and what Entra answered."""

    status: HealthStatus
    checkedAt: Timestamp | None
    message: str | None


class WhoOut(_Out):
    """A person (``user``), a daemon (``app``) or the service itself (``system``)."""

    id: str
    name: str
    type: str


class AuthorizedByOut(_Out):
    """The person who consented to an OAuth connection, from the ID token of their sign-in."""

    oid: str
    upn: str | None
    tenantId: str | None


class ConnectionOut(_Out):
    id: str
    name: str
    description: str | None
    app: AppId
    method: MethodName
    credentials: ConnectionCredentialsOut
    createdAt: Timestamp
    updatedAt: Timestamp
    version: int
    status: ConnectionStatus
    statusMessage: str | None
    lastValidatedAt: Timestamp | None
    isAutoRotationEnabled: bool
    rotation: RotationOut | None
    credentialExpiresAt: Timestamp | None
    health: HealthOut
    createdBy: WhoOut | None
    updatedBy: WhoOut | None
    authorizedBy: AuthorizedByOut | None


class ConnectionEnvelope(_Out):
    appConnection: ConnectionOut


class RotationContinuesOut(_Out):
    """The ``202`` of a request whose rotation (or move to federated) was handed to the rotation sweep: the request
    had to be answered while the new credential was still being tested. The connection as it is (``rotation.status``
    ``rotating``), and ``detail``: what goes on (its rotation's message)."""

    appConnection: ConnectionOut
    detail: str


class ConnectionList(_Out):
    appConnections: list[ConnectionOut]
    continuationToken: str | None


class DeletedOut(_Out):
    """A deleted connection as it was, and the client secrets the service had created on its application: the
    ones removed, and the ones left live (only with ``?force=true``, when Graph refused to remove them); and the
    applications (client IDs) that could not even be read, where what the service created is found by its display
    name, ``app-connections <connection id> rotation ...``."""

    appConnection: ConnectionOut
    removedKeyIds: list[str]
    keyIdsLeftLive: list[str]
    applicationsNotRead: list[str]


class RotationEventOut(_Out):
    """One attempt of one rotation (``running`` while it runs; ``interrupted`` when it stopped without an outcome
    and a later attempt resumed its rotation): ``finishedAt`` and ``durationMs`` are null until it has ended."""

    id: str
    attempt: int
    startedAt: Timestamp
    finishedAt: Timestamp | None
    outcome: str
    trigger: RotationTrigger
    newKeyId: str | None
    revokedKeyId: str | None
    message: str | None
    durationMs: int | None


class RotationHistoryOut(_Out):
    rotations: list[RotationEventOut]
    continuationToken: str | None


class PermissionOut(_Out):
    api: str
    permission: str
    type: str


class FederatedCredentialOut(_Out):
    """The federated identity credential to add to the app registration (Graph's field names)."""

    name: str
    issuer: str
    subject: str
    audiences: list[str]
    description: str


class FederatedOptionOut(_Out):
    """Whether the federated method is available here, and what the application needs for it."""

    available: bool
    reason: str | None
    identityClientId: str | None
    identityPrincipalId: str | None
    identityTenantId: str | None
    federatedCredential: FederatedCredentialOut | None
    limits: list[str]
    settings: list[str]
    migrationMethods: list[str]


class AppOptionOut(_Out):
    app: AppId
    name: str
    methods: list[str]
    unavailableMethods: dict[str, str]
    rotationMethods: list[str]
    scope: str
    permissions: list[PermissionOut]
    resourceAccess: str = Field(description="What the application's service principal needs on the target for "
                                            "the methods that sign in as it (a validation checks the sign-in only).")
    oauthConfigured: bool
    oauthClientId: str | None
    oauthSettings: list[str]
    redirectUri: str
    federated: FederatedOptionOut


class OptionsOut(_Out):
    appConnectionOptions: list[AppOptionOut]


class ClientOut(_Out):
    name: str
    id: str
    appId: str


class ClientsOut(_Out):
    clients: list[ClientOut]
    continuationToken: str | None


class AuthorizationUrlOut(_Out):
    authorizationUrl: str


class FieldErrorOut(_Out):
    pointer: str
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details; further members (``aadstsCode``, ``settings``, ...) are extensions."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldErrorOut] | None = None


class ActorOut(_Out):
    id: str
    name: str
    type: str
    role: str | None


class AuditRecordOut(_Out):
    """One audit record: never a secret."""

    id: str
    at: Timestamp
    action: str
    outcome: str
    actor: ActorOut
    app: str | None
    connectionId: str | None
    connectionName: str | None
    detail: str | None
    clientIp: str | None
    userAgent: str | None
    requestId: str | None
    traceId: str | None


class AuditLogOut(_Out):
    auditLogs: list[AuditRecordOut]
    continuationToken: str | None


class HealthCountsOut(_Out):
    healthy: int
    expiring: int
    failing: int
    expired: int
    unknown: int


class AttentionOut(_Out):
    app: AppId
    id: str
    name: str
    method: MethodName
    credentialExpiresAt: Timestamp | None
    health: HealthOut


class HealthSummaryOut(_Out):
    counts: HealthCountsOut
    byApp: dict[str, HealthCountsOut]
    needsAttention: list[AttentionOut]
