"""In-memory fakes of every adapter the domain is handed (``shared.ports``), for fast tests without network.

They keep the contracts the real adapters keep (ETags, unique names, vault versions that can be disabled,
Graph passwords with hints and display names, Entra accepting only live passwords), and they let a test
inject faults (:meth:`World.fail_next`) and watch the invariants (:class:`World` records every credential the
service created and every revocation).
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.apps import AppSpec, Method
from shared.errors import (
    ConcurrentChange,
    CredentialLifetimeRefused,
    CredentialRejected,
    NameTaken,
    NotFound,
    SecretGone,
    UpstreamError,
    UpstreamForbidden,
    VersionDisabled,
)
from shared.federation import FederationIdentity, federation_identity
from shared.ports import (
    Adapters,
    AppRegistration,
    DueEntry,
    FederatedCredential,
    KeyCredential,
    LifetimePolicy,
    Lost,
    NewPassword,
    PasswordCredential,
    StoredVersion,
    TokenResult,
)
from shared.records import AuditRecord, ConnectionRecord, Notification, PendingAuthorization, RotationEvent
from shared.sessions import PendingLogin, Session
from shared.settings import load_settings
from shared.store.history import row_key
from shared.store.schedule import key_for, parse_key

TENANT = "11111111-1111-1111-1111-111111111111"
IDENTITY_CLIENT_ID = "33333333-3333-3333-3333-333333333333"  # the service's user-assigned managed identity
IDENTITY_PRINCIPAL_ID = "44444444-4444-4444-4444-444444444444"
START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class Clock:
    """The wall clock (``now``, which a test sets or moves) and a monotonic one (:meth:`monotonic`, seconds) that
    moves with it, but for :meth:`step`: the wall clock set back or forward (NTP) leaves the monotonic one as it was.
    The monotonic one never goes back (a test that sets ``now`` back holds it where it was)."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self._origin = now
        self._read = 0.0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def step(self, delta: timedelta) -> None:
        """The wall clock set by ``delta``, as NTP steps it; time spent is unchanged."""
        self.now += delta
        self._origin += delta

    def monotonic(self) -> float:
        self._read = max(self._read, (self.now - self._origin).total_seconds())
        return self._read


# -- Entra ID and Graph ------------------------------------------------------------------------------------------
@dataclass
class Password:
    key_id: str
    secret: str = field(repr=False)
    display_name: str | None
    end: datetime | None
    created_by_service: bool


@dataclass
class Key:
    """A certificate on an application (``keyCredentials``). ``secret`` is its certificate's PEM: what a
    connection's material names, as a password's secret does."""

    key_id: str
    secret: str = field(repr=False)
    display_name: str | None
    end: datetime | None
    created_by_service: bool
    thumbprint: str = ""
    public_key: Any = field(default=None, repr=False)
    usage: str = "Verify"  # or "Encrypt": the same certificate may be on the application for token encryption


@dataclass
class Application:
    client_id: str
    object_id: str
    passwords: dict[str, Password] = field(default_factory=dict)
    may_manage_itself: bool = True
    keys: dict[str, Key] = field(default_factory=dict)
    # The application's own app-management policy (None: none assigned), readable unless policy_forbidden.
    policy: LifetimePolicy | None = None
    policy_forbidden: bool = False
    federated: dict[str, FederatedCredential] = field(default_factory=dict)  # by id
    # A multi-tenant application's home tenant: Graph signed in from another tenant finds only its service principal
    # (no application object: 404). None: Graph finds it from any tenant (the tests of one tenant).
    home_tenant: str | None = None


_KEY_POOLS: dict[int, list[Any]] = {}
KEY_POOL_SIZE = 6


def pooled_rsa_key(bits: int) -> Any:
    """An RSA key of ``bits`` from a small pool, made once and handed out in turn: a certificate's key pair is not
    what the fakes' tests check, and RSA keys cost 50 ms (2048 bits) to 160 ms (3072) each to make."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    pool = _KEY_POOLS.setdefault(bits, [])
    if len(pool) < KEY_POOL_SIZE:
        pool.append(rsa.generate_private_key(65537, bits))
        return pool[-1]
    pool.append(pool.pop(0))
    return pool[-1]


def make_certificate(*, days: int = 3650, start: datetime | None = None) -> dict[str, str]:
    """The material of a certificate connection: a self-signed certificate and its 2048-bit RSA key (Entra ID
    takes RSA certificates only), valid ``days`` from ``start``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = pooled_rsa_key(2048)
    begin = (start or START) - timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-app")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(begin)
            .not_valid_after(begin + timedelta(days=days)).sign(key, hashes.SHA256()))
    return {"certificateBody": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "privateKey": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()}


def _key_of(certificate_pem: str, display_name: str | None, by_service: bool) -> Key:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return Key(str(uuid.uuid4()), certificate_pem, display_name, cert.not_valid_after_utc, by_service,
               hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(), cert.public_key())


class World:
    """The tenant: applications and their passwords, and what happened to them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.apps: dict[str, Application] = {}
        self.worked: set[str] = set()  # secrets a token was acquired with
        self.no_match_code = "AADSTS70021"  # Entra's refusal when no federated credential matches the identity
        self.created: dict[str, tuple[str, Password | Key]] = {}  # key id -> (client id, password) made through Graph
        self.revocations: list[tuple[str, str]] = []  # (client id, key id)
        self._faults: list[tuple[str, Exception, int]] = []  # (operation prefix, error, remaining)
        self.on_revoke: Callable[[str, Password | Key], None] | None = None
        self.calls: list[str] = []
        self.federated_added: list[tuple[str, str]] = []  # (client id, federated credential id) made through Graph
        self.proofs: list[str] = []  # Key IDs of the keys that signed each accepted proof, in order
        self.tenant_policy: LifetimePolicy | None = None  # the tenant's defaultAppManagementPolicy (None: disabled)
        self.tenant_policy_forbidden = False
        self.policy_reads = 0
        # The service's managed identity (the FEDERATION_IDENTITY_* settings), and how many federated sign-ins
        # Entra refuses after a federated credential was added (propagation).
        self.federation: FederationIdentity | None = None
        self.federation_delay = 0

    def application(self, client_id: str | None = None) -> Application:
        client_id = client_id or str(uuid.uuid4())
        app = Application(client_id, str(uuid.uuid4()))
        self.apps[client_id] = app
        return app

    def add(self, client_id: str, display_name: str | None = None, *, by_service: bool = False,
            end: datetime | None = None) -> Password:
        secret = secrets.token_urlsafe(30)
        password = Password(str(uuid.uuid4()), secret, display_name, end, by_service)
        self.apps[client_id].passwords[password.key_id] = password
        return password

    def add_certificate(self, client_id: str, display_name: str | None = None, *,
                        by_service: bool = False) -> tuple[Key, dict[str, str]]:
        """A certificate the owner uploaded (or the service added): the key on the application and its material."""
        material = make_certificate(start=self.clock.now)
        key = _key_of(material["certificateBody"], display_name, by_service)
        self.apps[client_id].keys[key.key_id] = key
        return key, material

    def credential(self, client_id: str, key_id: str) -> Password | Key | None:
        app = self.apps[client_id]
        return app.passwords.get(key_id) or app.keys.get(key_id)

    def add_federated(self, client_id: str, name: str = "by-hand", *, issuer: str | None = None,
                      subject: str | None = None) -> FederatedCredential:
        """A federated identity credential the user added (naming the service's identity unless told otherwise)."""
        assert self.federation is not None
        credential = FederatedCredential(str(uuid.uuid4()), name, issuer or self.federation.issuer,
                                         subject or self.federation.principal_id, (self.federation.audience,))
        self.apps[client_id].federated[credential.id] = credential
        return credential

    def federated_live(self, client_id: str) -> bool:
        """Entra accepts the service's identity's token as the application's assertion."""
        app = self.apps.get(client_id)
        identity = self.federation
        return app is not None and identity is not None and any(
            identity.matches(c.issuer, c.subject, c.audiences) for c in app.federated.values())

    def fail_next(self, operation: str, error: Exception | None = None, times: int = 1) -> None:
        """The next ``times`` calls whose name starts with ``operation`` (probe, graph.find, graph.add,
        graph.remove, vault.write, vault.get, store.update, ...) raise ``error`` (an upstream failure)."""
        self._faults.append((operation, error or UpstreamError(f"{operation} failed (injected)"), times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def check(self, operation: str) -> None:
        self.calls.append(operation)
        for index, (prefix, error, remaining) in enumerate(self._faults):
            if operation.startswith(prefix):
                if remaining <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = (prefix, error, remaining - 1)
                raise error

    def owner_of(self, secret: str) -> tuple[Application, Password] | None:
        for app in self.apps.values():
            for password in app.passwords.values():
                if password.secret == secret:
                    return app, password
        return None

    def present(self, client_id: str, secret: str) -> bool:
        """``secret`` is a password (or certificate) of the application (not removed; it may have expired)."""
        app = self.apps.get(client_id)
        return app is not None and any(p.secret == secret for p in [*app.passwords.values(), *app.keys.values()])

    def live(self, client_id: str, secret: str) -> bool:
        """Entra accepts ``secret``: a password (or certificate) of the application that has not expired."""
        app = self.apps.get(client_id)
        return app is not None and any(p.secret == secret and (p.end is None or p.end > self.clock.now)
                                       for p in [*app.passwords.values(), *app.keys.values()])

    def verify_proof(self, app: Application, proof: str) -> Key:
        """Graph's check of an addKey / removeKey proof: a JWT signed by a live key of the application (found by
        the x5t#S256 of its header), ``aud`` Graph, ``iss`` the application's object id, within nbf..exp.
        Records which key signed it (``proofs``)."""
        import base64
        import hashlib
        import json
        import time

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        def part(text: str) -> bytes:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

        refused = UpstreamError("Microsoft Graph failed to check the proof (400 InvalidProof).")
        try:
            head, body, signature = proof.split(".")
            header, claims = json.loads(part(head)), json.loads(part(body))
        except ValueError:
            raise refused from None
        signer = None
        for key in app.keys.values():
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            der = x509.load_pem_x509_certificate(key.secret.encode()).public_bytes(serialization.Encoding.DER)
            if base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode() == header.get("x5t#S256"):
                signer = key
        if signer is None or (signer.end is not None and signer.end <= self.clock.now):
            raise refused
        raw, message = part(signature), f"{head}.{body}".encode()
        try:
            assert isinstance(signer.public_key, rsa.RSAPublicKey)
            signer.public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            raise refused from None
        now = time.time()
        if (claims.get("aud") != "00000002-0000-0000-c000-000000000000" or claims.get("iss") != app.object_id
                or not claims.get("nbf", now + 1) <= now + 60 or not now < claims.get("exp", 0)
                or claims["exp"] - claims["nbf"] > 600):
            raise refused
        self.proofs.append(signer.key_id)
        return signer


class FakeGraph:
    def __init__(self, world: World, client_id: str, read_keys: bool = False,
                 refusal: CredentialRejected | None = None, tenant_id: str | None = None) -> None:
        self.world = world
        self.client_id = client_id
        self.tenant_id = tenant_id  # signed in there (None: anywhere)
        self.read_keys = read_keys  # as Graph's $select: the key credentials only when asked for
        self.refusal = refusal  # Entra's, of the session's credential: raised by its first call, as a token's is

    def _signed_in(self, operation: str) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.world.check(operation)

    def _app(self, client_id: str) -> Application:
        app = self.world.apps.get(client_id)
        elsewhere = (app is not None and app.home_tenant is not None and self.tenant_id is not None
                     and self.tenant_id.lower() != app.home_tenant.lower())
        if app is None or elsewhere:
            raise NotFound(f"Microsoft Graph has no app registration with appId {client_id}.")
        if client_id != self.client_id or not app.may_manage_itself:
            raise UpstreamForbidden("Microsoft Graph refused (403 Authorization_RequestDenied).")
        return app

    def _by_object(self, object_id: str) -> Application:
        app = next((a for a in self.world.apps.values() if a.object_id == object_id), None)
        if app is None:
            raise NotFound("No such application.")
        return self._app(app.client_id)

    async def find(self, app_id: str) -> AppRegistration:
        self._signed_in("graph.find")
        app = self._app(app_id)
        return AppRegistration(app.object_id, app.client_id, "app", tuple(
            PasswordCredential(p.key_id, p.secret[:3], p.display_name, p.end) for p in app.passwords.values()),
            keys=tuple(KeyCredential(k.key_id, k.display_name, k.thumbprint, k.end, k.usage)
                       for k in app.keys.values()) if self.read_keys else ())

    def _within_policy(self, app: Application, lifetime: timedelta, password: bool) -> None:
        policy = app.policy or self.world.tenant_policy
        if policy is None:
            return
        if password and policy.password_addition_restricted:
            raise CredentialLifetimeRefused("refused (CredentialTypeNotAllowedAsPerAppPolicy)",
                                            extensions={"graphCode": "CredentialTypeNotAllowedAsPerAppPolicy"})
        cap = policy.password_max_lifetime if password else policy.key_max_lifetime
        if cap is not None and lifetime > cap:
            raise CredentialLifetimeRefused("refused (CredentialInvalidLifetimeAsPerAppPolicy)",
                                            extensions={"graphCode": "CredentialInvalidLifetimeAsPerAppPolicy"})

    async def lifetime_policy(self, object_id: str, created_at: datetime | None = None) -> LifetimePolicy | None:
        self._signed_in("graph.policy")
        self.world.policy_reads += 1
        app = self._by_object(object_id)
        if app.policy_forbidden:
            return None
        if app.policy is not None:
            return app.policy
        if self.world.tenant_policy_forbidden:
            return None
        return self.world.tenant_policy or LifetimePolicy("tenant")

    async def add_key(self, object_id: str, display_name: str, certificate_der: bytes, proof: str) -> KeyCredential:
        self._signed_in("graph.add")
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        app = self._by_object(object_id)
        self.world.verify_proof(app, proof)
        pem = x509.load_der_x509_certificate(certificate_der).public_bytes(serialization.Encoding.PEM).decode()
        key = _key_of(pem, display_name, True)
        self._within_policy(app, (key.end or self.world.clock.now) - self.world.clock.now, password=False)
        app.keys[key.key_id] = key
        self.world.created[key.key_id] = (app.client_id, key)
        self.world.check("graph.add.lost")  # applied, but the answer is lost
        return KeyCredential(key.key_id, display_name, key.thumbprint, key.end, "Verify")

    async def remove_key(self, object_id: str, key_id: str, proof: str) -> None:
        self._signed_in("graph.remove")
        app = self._by_object(object_id)
        self.world.verify_proof(app, proof)
        key = app.keys.get(key_id)
        if key is None:
            return
        if self.world.on_revoke is not None:
            self.world.on_revoke(app.client_id, key)
        del app.keys[key_id]
        self.world.revocations.append((app.client_id, key_id))
        self.world.check("graph.removal.lost")  # applied, but the answer is lost (not "graph.remove...": a fault
        # armed for the next removal while this one is made must not fire here)

    async def add_password(self, object_id: str, display_name: str, end: datetime, lost: Lost) -> NewPassword:
        self._signed_in("graph.add")
        app = self._by_object(object_id)
        self._within_policy(app, end - self.world.clock.now, password=True)
        password = self.world.add(app.client_id, display_name, by_service=True, end=end)
        self.world.created[password.key_id] = (app.client_id, password)
        try:
            self.world.check("graph.add.lost")  # applied, but the answer is lost
        except Exception:
            await lost()  # as the adapter does before it sends again; here its tries run out
            raise
        return NewPassword(password.key_id, password.secret, end)

    async def remove_password(self, object_id: str, key_id: str) -> None:
        self._signed_in("graph.remove")
        app = self._by_object(object_id)
        password = app.passwords.get(key_id)
        if password is None:
            return
        if self.world.on_revoke is not None:
            self.world.on_revoke(app.client_id, password)
        del app.passwords[key_id]
        self.world.revocations.append((app.client_id, key_id))
        self.world.check("graph.removal.lost")  # applied, but the answer is lost (not "graph.remove...": a fault
        # armed for the next removal while this one is made must not fire here)

    async def federated_credentials(self, object_id: str) -> list[FederatedCredential]:
        self._signed_in("graph.fic.list")
        return list(self._by_object(object_id).federated.values())

    async def add_federated_credential(self, object_id: str, credential: Mapping[str, Any]) -> FederatedCredential:
        self._signed_in("graph.fic.add")
        app = self._by_object(object_id)
        if any(c.name == credential["name"] for c in app.federated.values()):
            raise UpstreamError("Microsoft Graph failed to add a federated identity credential (409 Conflict).")
        if len(app.federated) >= 20:
            raise UpstreamError("Microsoft Graph failed to add a federated identity credential (400 limit).")
        added = FederatedCredential(str(uuid.uuid4()), credential["name"], credential["issuer"],
                                    credential["subject"], tuple(credential["audiences"]))
        app.federated[added.id] = added
        self.world.federated_added.append((app.client_id, added.id))
        self.world.check("graph.fic.add.lost")  # applied, but the answer is lost
        return added

    async def remove_federated_credential(self, object_id: str, credential_id: str) -> None:
        self._signed_in("graph.fic.remove")
        self._by_object(object_id).federated.pop(credential_id, None)

    async def list_applications(self, page_size: int, continuation: str | None = None, listing: str = "",
                                ) -> tuple[list[dict[str, str]], str | None]:
        self._signed_in("graph.list")
        app = self._app(self.client_id)
        return [{"name": "app", "id": app.object_id, "appId": app.client_id}], None


class FakeDirectory:
    """Entra ID accepts a client secret that is a live password of the application; Graph lets an application
    manage itself."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def probe(self, app: AppSpec, method: Method, tenant_id: str, client_id: str,
                    material: Mapping[str, str]) -> None:
        self.world.check("probe")
        if method is Method.FEDERATED:
            self._federated(client_id)
            self.world.worked.add(f"federated:{client_id}")
            return
        if method is Method.CERTIFICATE and material.get("privateKey"):
            self._stored_certificate(material)
        secret = material.get("clientSecret") or material.get("certificateBody", "")
        if method is Method.CERTIFICATE and not material.get("privateKey"):
            raise CredentialRejected("AADSTS700027: Client assertion failed signature validation.")
        if not self.world.live(client_id, secret):
            raise CredentialRejected("AADSTS7000215: Invalid client secret provided.",
                                     extensions={"aadstsCode": "AADSTS7000215"})
        self.world.worked.add(secret)

    @asynccontextmanager
    async def graph(self, method: Method, tenant_id: str, client_id: str, material: Mapping[str, str], *,
                    read_keys: bool | None = None) -> AsyncIterator[FakeGraph]:
        self.world.check("graph.token")
        if method is Method.FEDERATED:
            self._federated(client_id)
        if method is Method.CERTIFICATE and material.get("privateKey"):
            self._stored_certificate(material)
        refusal = None  # the real session acquires its token at its first call, and is refused there
        if method is not Method.FEDERATED and not self.world.live(
                client_id, material.get("clientSecret") or material.get("certificateBody", "")):
            refusal = self._refusal(method, client_id, material)
        yield FakeGraph(self.world, client_id, method is Method.CERTIFICATE if read_keys is None else read_keys,
                        refusal, tenant_id)

    def _stored_certificate(self, material: Mapping[str, str]) -> None:
        """The real directory parses a stored certificate before it asks Entra anything, and refuses one past its
        end (``CredentialExpired``) there: on the world's clock here."""
        from shared.credentials import stored_certificate

        stored_certificate(material["certificateBody"], material["privateKey"], self.world.clock.now)

    def _refusal(self, method: Method, client_id: str, material: Mapping[str, str]) -> CredentialRejected:
        """Entra's refusal of a credential that is not live, with its code: a certificate's key not found or
        expired (AADSTS700027), a client secret expired (AADSTS7000222) or unknown (AADSTS7000215)."""
        if method is Method.CERTIFICATE:
            code, text = "AADSTS700027", "Client assertion contains an invalid signature."
        elif self.world.present(client_id, material.get("clientSecret", "")):
            code, text = "AADSTS7000222", "The provided client secret keys are expired."
        else:
            code, text = "AADSTS7000215", "Invalid client secret provided."
        return CredentialRejected(f"{code}: {text}", extensions={"aadstsCode": code})

    def _federated(self, client_id: str) -> None:
        if self.world.federation is None:
            raise UpstreamError("The service's managed identity could not get a token.")
        if not self.world.federated_live(client_id):  # none, or none that matches: as the stand-in (and Entra)
            code = self.world.no_match_code  # Entra's code for it varies (70021, 700211 to 700213, 7002138)
            raise CredentialRejected(f"{code}: No matching federated identity record found for presented "
                                     "assertion.", extensions={"aadstsCode": code})
        home = self.world.apps[client_id].home_tenant
        if home is not None and home.lower() != self.world.federation.tenant_id.lower():  # as the stand-in (and Entra)
            raise CredentialRejected("AADSTS700236: Entra ID tokens issued by issuer "
                                     f"'{self.world.federation.issuer}' may not be used for federated identity "
                                     "credential flows for applications or managed identities registered in this "
                                     "tenant.", extensions={"aadstsCode": "AADSTS700236"})
        if self.world.federation_delay > 0:
            self.world.federation_delay -= 1
            raise CredentialRejected("AADSTS70021: No matching federated identity record found for presented "
                                     "assertion.", extensions={"aadstsCode": "AADSTS70021"})

    @asynccontextmanager
    async def graph_with(self, tokens: Any) -> AsyncIterator[FakeGraph]:
        await tokens.get_token("https://graph.microsoft.com/.default")
        yield FakeGraph(self.world, "")

    @contextmanager
    def paced(self, on_request: Any, on_response: Any) -> Iterator[None]:
        yield


# -- Table Storage and Key Vault -----------------------------------------------------------------------------
class FakeConnections:
    def __init__(self, world: World) -> None:
        self.world = world
        self.records: dict[tuple[str, str], ConnectionRecord] = {}
        self.names: dict[tuple[str, str], str] = {}
        self.outbox: list[Notification] = []
        self._etags = itertools.count(1)

    def _stamp(self, record: ConnectionRecord) -> ConnectionRecord:
        stamped = replace(record, etag=f"W/{next(self._etags)}")
        self.records[(record.app, record.id)] = stamped
        # Applied, but the answer is lost (not "store.update...": a fault armed for the next write cannot fire here)
        self.world.check("store.landed")
        return stamped

    async def insert(self, record: ConnectionRecord) -> ConnectionRecord:
        self.world.check("store.insert")
        if (record.app, record.name.lower()) in self.names:
            raise NameTaken(f"A connection named '{record.name}' already exists for {record.app}.")
        self.names[(record.app, record.name.lower())] = record.id
        return self._stamp(record)

    async def get(self, app: str, connection_id: str) -> ConnectionRecord:
        self.world.check("store.get")
        record = self.records.get((app, connection_id))
        if record is None:
            raise NotFound(f"No {app} connection has the id '{connection_id}'.")
        return record

    async def get_by_name(self, app: str, name: str) -> ConnectionRecord:
        connection_id = self.names.get((app, name.lower()))
        if connection_id is None:
            raise NotFound(f"No {app} connection is named '{name}'.")
        return await self.get(app, connection_id)

    async def list_page(self, app: str, limit: int,
                        continuation: str | None) -> tuple[list[ConnectionRecord], str | None]:
        rows = sorted((r for (a, _), r in self.records.items() if a == app), key=lambda r: r.id)
        start = int(continuation or 0)
        page = rows[start:start + limit]
        return page, str(start + limit) if start + limit < len(rows) else None

    async def update(self, record: ConnectionRecord, previous_name: str | None = None,
                     notify: Sequence[Notification] = ()) -> ConnectionRecord:
        self.world.check("store.update")
        current = self.records.get((record.app, record.id))
        if current is None or current.etag != record.etag:
            raise ConcurrentChange(f"The connection '{record.id}' was changed by another request.")
        if previous_name is not None and previous_name.lower() != record.name.lower():
            if (record.app, record.name.lower()) in self.names:
                raise NameTaken(f"A connection named '{record.name}' already exists for {record.app}.")
            del self.names[(record.app, previous_name.lower())]
            self.names[(record.app, record.name.lower())] = record.id
        self.outbox.extend(notify)  # in the same transaction
        return self._stamp(record)

    # the outbox
    async def pending(self, apps: Sequence[str], limit: int = 100) -> list[Notification]:
        self.world.check("outbox.pending")
        from shared.store.tables import outbox_key

        queued = sorted(self.outbox, key=outbox_key)  # due or not, as the store
        fresh, retried = [n for n in queued if not n.attempts][:limit], [n for n in queued if n.attempts][:limit]
        return sorted([*fresh, *retried], key=outbox_key)  # as the store: oldest first, each kind bounded

    async def claim(self, item: Notification, until: datetime) -> Notification | None:
        """As the store: under the ETag the notice was read with (another pass's copy no longer matches)."""
        self.world.check("outbox.claim")
        stored = next((n for n in self.outbox if n.id == item.id), None)
        if stored is None or stored.etag != item.etag:
            return None
        claimed = replace(item, next_attempt_at=until, etag=uuid.uuid4().hex)
        self.outbox = [claimed if n.id == item.id else n for n in self.outbox]
        return claimed

    async def delivered(self, item: Notification) -> None:
        self.outbox = [n for n in self.outbox if n.id != item.id]

    async def retry_later(self, item: Notification) -> None:
        """As the store: under the ETag of the pass's claim (another pass's claim since stands)."""
        again = replace(item, etag=uuid.uuid4().hex)
        self.outbox = [again if n.id == item.id and n.etag == item.etag else n for n in self.outbox]

    async def delete(self, record: ConnectionRecord) -> None:
        self.world.check("store.delete")
        current = self.records.get((record.app, record.id))
        if current is None or current.etag != record.etag:
            raise ConcurrentChange(f"The connection '{record.id}' was changed by another request.")
        del self.records[(record.app, record.id)]
        del self.names[(record.app, current.name.lower())]
        self.world.check("store.landed")  # applied, but the answer is lost


@dataclass
class Version:
    version: str
    material: dict[str, str] = field(repr=False)
    tags: dict[str, str]
    enabled: bool = True
    expires_on: datetime | None = None
    created_on: datetime | None = None


class FakeVault:
    def __init__(self, world: World) -> None:
        self.world = world
        self.secrets: dict[str, list[Version]] = {}
        self.deleted: set[str] = set()
        self.listings = 0  # listings of a secret's versions, as SecretVault makes one for each disable_* below
        # The next ``disable`` calls Key Vault refuses: the version stays enabled, without an error (the adapter's
        # disable is best effort).
        self.refused_disables = 0

    def version(self, name: str, version: str) -> Version:
        for item in self.secrets.get(name, []):
            if item.version == version:
                return item
        raise NotFound(f"No version {version} of {name}.")

    async def write(self, name: str, material: Mapping[str, str], tags: Mapping[str, str], *,
                    expires_on: datetime | None = None) -> StoredVersion:
        self.world.check("vault.write")
        self.deleted.discard(name)
        item = Version(uuid.uuid4().hex, dict(material), dict(tags), expires_on=expires_on,
                       created_on=self.world.clock.now)
        self.secrets.setdefault(name, []).append(item)
        return StoredVersion(item.version, dict(material))

    async def get(self, name: str, version: str) -> dict[str, str]:
        self.world.check("vault.get")
        if name in self.deleted:
            raise SecretGone(f"The secret {name} was deleted.")
        item = self.version(name, version)
        if not item.enabled:
            raise VersionDisabled(f"Key Vault refused to read a disabled version of {name}.")
        return dict(item.material)

    async def disable(self, name: str, version: str) -> bool:
        self.world.check("vault.disable")
        if self.refused_disables:  # Key Vault's refusal (a 403, a 409): logged by the real store, and False
            self.refused_disables -= 1
            return False
        for item in self.secrets.get(name, []):
            if item.version == version:
                item.enabled = False
        return True

    async def disable_others(self, name: str, keep: str) -> int:
        self.listings += 1
        return await self._disable(name, lambda item: item.version != keep)

    async def disable_tagged(self, name: str, tag: str, value: str) -> int:
        self.listings += 1
        return await self._disable(name, lambda item: item.tags.get(tag) == value)

    async def enabled_since(self, name: str) -> datetime | None:
        self.world.check("vault.list")
        self.listings += 1
        if name in self.deleted:
            return None
        return max((v.created_on for v in self.secrets.get(name, []) if v.enabled and v.created_on), default=None)

    async def disable_older(self, name: str, version: str) -> int:
        self.listings += 1
        written = [item.version for item in self.secrets.get(name, [])]  # in the order they were written
        if version not in written:
            return 0
        older = set(written[:written.index(version)])
        return await self._disable(name, lambda item: item.version in older)

    async def _disable(self, name: str, doomed: Callable[[Version], bool]) -> int:
        self.world.check("vault.disable")
        count = 0
        for item in self.secrets.get(name, []):
            if item.enabled and doomed(item):
                item.enabled = False
                count += 1
        return count

    async def delete(self, name: str) -> None:
        self.world.check("vault.delete")
        self.deleted.add(name)


class FakeSchedule:
    def __init__(self, world: World) -> None:
        self.world = world
        self.keys: set[str] = set()
        self.written = 0  # tags the entries, as the index's random tags do (counted here: runs repeat)

    async def put(self, due: datetime, app: str, connection_id: str, keep: str | None = None) -> str:
        self.world.check("schedule.put")
        self.written += 1
        key = key_for(due, app, connection_id, keep, f"{self.written:06x}")
        self.keys.add(key)
        return key

    async def remove(self, key: str | None) -> None:
        if key:
            self.world.check("schedule.remove")
            self.keys.discard(key)

    async def due(self, now: datetime, limit: int = 1000) -> list[DueEntry]:
        upto = f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}|~"
        return [parse_key(key) for key in sorted(self.keys) if key <= upto][:limit]


class FakeHistory:
    def __init__(self, world: World) -> None:
        self.world = world
        self.rows: dict[tuple[str, str], RotationEvent] = {}

    async def record(self, event: RotationEvent) -> None:
        self.world.check("history.record")
        key = (event.connection_id, row_key(event.started_at, event.rotation_id, event.attempt))
        if event.outcome != "running" or key not in self.rows:
            self.rows[key] = event

    async def get(self, connection_id: str, started_at: datetime, rotation_id: str,
                  attempt: int) -> RotationEvent | None:
        return self.rows.get((connection_id, row_key(started_at, rotation_id, attempt)))

    async def page(self, connection_id: str, limit: int,
                   continuation: str | None) -> tuple[list[RotationEvent], str | None]:
        rows = [event for (cid, _), event in sorted(self.rows.items()) if cid == connection_id]
        return rows[:limit], None

    async def delete_all(self, connection_id: str) -> None:
        for key in [key for key in self.rows if key[0] == connection_id]:
            del self.rows[key]

    async def expired(self, before: datetime) -> AsyncGenerator[tuple[str, list[str]], None]:
        """As the store: the entries of attempts started before ``before`` but ``running`` ones, connection after
        connection, a hundred at most at a time, newest first."""
        self.world.check("history.expired")
        doomed = sorted(key for key, event in self.rows.items()
                        if event.started_at < before and event.outcome != "running")
        for connection_id, keys in itertools.groupby(doomed, key=lambda key: key[0]):
            rows = [row for _, row in keys]
            for start in range(0, len(rows), 100):
                yield connection_id, rows[start:start + 100]

    async def latest(self, connection_id: str, within: timedelta) -> list[str]:
        rows = sorted(row for cid, row in self.rows if cid == connection_id)
        bound = int(rows[0][:15]) + within // timedelta(milliseconds=1) if rows else 0
        return [row for row in rows if int(row[:15]) <= bound]

    async def delete(self, connection_id: str, keys: list[str]) -> None:
        self.world.check("history.delete")
        assert len(keys) <= 100
        for key in keys:
            self.rows.pop((connection_id, key), None)

    def of(self, connection_id: str) -> list[RotationEvent]:
        return [event for (cid, _), event in self.rows.items() if cid == connection_id]


class FakeTokens:
    """The authority's token endpoint for OAuth grants: codes and refresh tokens it issued, rotated on use."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.refresh_tokens: set[str] = set()
        # Who signs in: the ID token's claims that name them (the profile scope's); None: a token that names nobody.
        self.signed_in: dict[str, str] | None = {"oid": "0a0a0a0a-0000-4000-8000-00000000ada0",
                                                 "preferred_username": "ada@contoso.example"}

    def issue(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        self.refresh_tokens.add(token)
        return token

    async def redeem(self, tenant: str, form: Mapping[str, str]) -> TokenResult:
        self.world.check("tokens.redeem")
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                raise CredentialRejected("AADSTS70008: The refresh token has expired.",
                                         extensions={"entraError": "invalid_grant"})
            self.refresh_tokens.discard(form["refresh_token"])
        return TokenResult("at-" + secrets.token_urlsafe(8), self.issue(), 2_000_000_000,
                           {"tid": TENANT, **(self.signed_in or {})})


class FakeAudit:
    def __init__(self, world: World) -> None:
        self.world = world
        self.records: list[AuditRecord] = []

    async def append(self, record: AuditRecord) -> None:
        self.world.check("audit.append")
        self.records.append(record)

    async def query(self, start: datetime, end: datetime, *, connection_id: str | None = None,
                    actor: str | None = None, action: str | None = None, limit: int = 100,
                    continuation: str | None = None, apps: Collection[str] | None = None, search: str = "",
                    ) -> tuple[list[AuditRecord], str | None]:
        from shared.store.tables import invalid_token

        found = [r for r in reversed(self.records) if start <= r.at <= end
                 and connection_id in (None, r.connection_id) and actor in (None, r.actor.id)
                 and action in (None, r.action) and (apps is None or r.app in apps)]
        given, _, offset_text = (continuation or f"{search}:0").rpartition(":")
        if given != search or not offset_text.isdigit():  # as the store: a token of another search is a 400
            raise invalid_token("The continuation token is not valid for this search; start again without it.")
        offset = int(offset_text)
        page = found[offset:offset + limit]
        return page, f"{search}:{offset + limit}" if offset + limit < len(found) else None

    async def purge(self, before: datetime, limit: int = 10_000) -> int:
        """As the store: the records of the days before ``before``'s day, at most ``limit`` of them."""
        day = before.replace(hour=0, minute=0, second=0, microsecond=0)
        doomed = [r for r in self.records if r.at < day][:limit]
        self.records = [r for r in self.records if r not in doomed]
        return len(doomed)


class FakeWebhook:
    """A receiver: what it was sent, and an answer that can be made to fail."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.answer = 202

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.world.check("webhook.post")
        if self.answer < 300:
            self.received.append((url, body, dict(headers)))
        return self.answer


class FakeStates:
    def __init__(self) -> None:
        self.states: dict[str, PendingAuthorization] = {}

    async def put(self, state: str, pending: PendingAuthorization) -> None:
        self.states[state] = pending

    async def take(self, state: str) -> PendingAuthorization | None:
        return self.states.pop(state, None)

    async def purge_expired(self, now: datetime) -> int:
        return 0


class FakeSessions:
    """The console's session store (``shared.store.sessions``): what it holds, by (bucket, hash)."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], Session] = {}
        self.logins: dict[tuple[str, str], PendingLogin] = {}
        self.touches = 0

    async def create(self, session: Session) -> None:
        assert (session.bucket, session.key) not in self.sessions
        self.sessions[(session.bucket, session.key)] = session

    async def get(self, bucket: str, key: str) -> Session | None:
        return self.sessions.get((bucket, key))

    async def touch(self, bucket: str, key: str, at: datetime) -> bool:
        if (bucket, key) not in self.sessions:
            return False
        self.touches += 1
        self.sessions[(bucket, key)] = replace(self.sessions[(bucket, key)], last_seen_at=at)
        return True

    async def delete(self, bucket: str, key: str) -> None:
        self.sessions.pop((bucket, key), None)

    async def put_login(self, pending: PendingLogin) -> None:
        self.logins[(pending.bucket, pending.key)] = pending

    async def take_login(self, bucket: str, key: str) -> PendingLogin | None:
        return self.logins.pop((bucket, key), None)

    async def purge_expired(self, now: datetime, limit: int = 100) -> int:
        """As the table store: the sessions, then the pending sign-ins, of hours that have passed; a page of
        ``limit`` at most."""
        cutoff = now.strftime("%Y%m%d%H")
        count = 0
        for kept in (self.sessions, self.logins):
            for key in [k for k in kept if k[0] < cutoff][:limit - count]:
                del kept[key]
                count += 1
        return count


@dataclass
class Fakes:
    clock: Clock
    world: World
    connections: FakeConnections
    vault: FakeVault
    schedule: FakeSchedule
    history: FakeHistory
    directory: FakeDirectory
    tokens: FakeTokens
    states: FakeStates
    audit: FakeAudit
    health_index: FakeSchedule
    webhook: FakeWebhook
    adapters: Adapters


async def _no_sleep(seconds: float) -> None:
    return None


def build_fakes(env: Mapping[str, str] | None = None) -> Fakes:
    clock = Clock()
    world = World(clock)
    connections, vault = FakeConnections(world), FakeVault(world)
    schedule, history = FakeSchedule(world), FakeHistory(world)
    directory, tokens, states, audit = FakeDirectory(world), FakeTokens(world), FakeStates(), FakeAudit(world)
    health_index, webhook = FakeSchedule(world), FakeWebhook(world)
    settings = load_settings({
        "AzureWebJobsStorage": "UseDevelopmentStorage=true", "KEY_VAULT_URL": "https://vault.example",
        "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
        "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "instance-secret",
        "FEDERATION_IDENTITY_CLIENT_ID": IDENTITY_CLIENT_ID, "FEDERATION_IDENTITY_PRINCIPAL_ID": IDENTITY_PRINCIPAL_ID,
        "FEDERATION_IDENTITY_TENANT_ID": TENANT, **(env or {}),
    })
    world.federation = federation_identity(settings)
    adapters = Adapters(settings=settings, connections=connections, vault=vault, schedule=schedule, history=history,
                        directory=directory, tokens=tokens, oauth_states=states, audit=audit, outbox=connections,
                        health_index=health_index, webhook=webhook, clock=clock, sleep=_no_sleep,
                        monotonic=clock.monotonic)
    return Fakes(clock, world, connections, vault, schedule, history, directory, tokens, states, audit, health_index,
                 webhook, adapters)
