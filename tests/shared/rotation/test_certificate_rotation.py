"""Certificate self-rotation against in-memory fakes: a new key of the same kind, added with addKey under a proof
signed by the certificate in use, tested, stored as the connection's new vault version (PEM key and
certificate), and the previous key removed with removeKey under a proof signed by the new certificate."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.credentials import parse_certificate
from shared.records import ConnectionRecord
from shared.rotation.certificates import new_certificate, proof_of_possession
from tests.fakes import START, Key, make_certificate
from tests.lifecycle_harness import Harness

INTERVAL = 30


def thumbprint(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def material(h: Harness, record: ConnectionRecord) -> dict[str, str]:
    return h.fakes.vault.version(record.secret_name, record.secret_version).material


async def rotating(h: Harness) -> tuple[ConnectionRecord, str]:
    """A certificate connection with rotation on, created with the owner's certificate, before its first
    rotation: (the record, the Key ID of the owner's certificate on the application)."""
    app = h.fakes.world.application()
    key, given = h.fakes.world.add_certificate(app.client_id, "given by the owner")
    record = await h.api.create("azure-client-secrets", {
        "name": "cert", "method": "certificate",
        "credentials": {"tenantId": "11111111-1111-1111-1111-111111111111", "clientId": app.client_id, **given},
    })
    h.fakes.world.proofs.clear()
    saved = await h.api.update("azure-client-secrets", record.id, {
        "isAutoRotationEnabled": True,
        "rotation": {"rotationInterval": INTERVAL, "rotateAt": "03:00", "timeZone": "UTC"}})
    return saved, key.key_id


async def test_a_certificate_is_rolled_with_addkey_and_removekey_and_proofs_by_the_right_keys() -> None:
    h = Harness(method="certificate")
    record, owners_key = await rotating(h)
    assert record.rotation.status == "succeeded", record.rotation.message
    app = h.fakes.world.apps[record.client_id or ""]
    # The owner's key is gone; one key is left, the one the service added, and it is the connection's certificate.
    assert owners_key not in app.keys and (record.client_id, owners_key) in h.fakes.world.revocations
    (new_key,) = app.keys.values()
    assert new_key.created_by_service and (new_key.display_name or "").startswith(f"app-connections {record.id}")
    now = material(h, record)
    assert thumbprint(now["certificateBody"]) == new_key.thumbprint
    # addKey was proven by the owner's key, removeKey by the new one.
    assert h.fakes.world.proofs == [owners_key, new_key.key_id]
    assert record.rotation.key_id == new_key.key_id
    # The vault keeps the new PEM key and certificate, which the certificate method reads as it is.
    parsed = parse_certificate(now["certificateBody"], now["privateKey"], START)
    key = serialization.load_pem_private_key(now["privateKey"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072  # whatever the size of the owner's
    # Valid two intervals and the grace period: it outlives a missed rotation.
    assert parsed.not_after - START == timedelta(days=2 * INTERVAL + 3)
    assert now["certificateBody"] in h.fakes.world.worked  # a token was acquired with it before the revocation
    versions = h.fakes.vault.secrets[record.secret_name]
    assert [v.version for v in versions if v.enabled] == [record.secret_version]


async def test_the_next_rotation_rolls_the_certificate_the_service_made() -> None:
    h = Harness(method="certificate")
    record, _ = await rotating(h)
    first = material(h, record)["certificateBody"]
    await h.due()
    await h.sweep()
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "succeeded", after and after.rotation.message
    second = material(h, after)["certificateBody"]
    assert second != first
    app = h.fakes.world.apps[record.client_id or ""]
    assert [k.thumbprint for k in app.keys.values()] == [thumbprint(second)]
    assert h.check() == []


async def test_a_new_certificate_that_never_works_is_removed_with_a_proof_by_the_current_one() -> None:
    h = Harness(method="certificate")
    record, _ = await rotating(h)
    assert record.rotation.status == "succeeded"
    current_key = record.rotation.key_id
    h.fakes.world.proofs.clear()
    await h.due()
    h.fakes.world.fail_next("probe", times=10**9)  # until the test deadline (2 s) passes
    await h.sweep()
    after = await h.record(record.id)
    assert after is not None
    assert after.rotation.status == "failed"
    assert "The new certificate did not work" in (after.rotation.message or "")
    assert "current certificate was left in place" in (after.rotation.message or "")
    app = h.fakes.world.apps[record.client_id or ""]
    assert list(app.keys) == [current_key]  # the successor was removed; the one in use is kept
    assert h.fakes.world.proofs == [current_key, current_key]  # addKey and the clean-up's removeKey
    assert after.secret_version == record.secret_version
    assert h.check() == []


def test_a_proof_names_graph_and_the_application_lives_ten_minutes_and_carries_the_signers_thumbprint() -> None:
    given = make_certificate()
    signer = parse_certificate(given["certificateBody"], given["privateKey"], START)
    proof = proof_of_possession(signer, "object-id-of-the-app", now=1_800_000_000)
    head, body, _ = proof.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert claims == {"aud": "00000002-0000-0000-c000-000000000000", "iss": "object-id-of-the-app",
                      "nbf": 1_800_000_000, "exp": 1_800_000_600}
    assert header["alg"] == "RS256"
    assert base64.urlsafe_b64decode(header["x5t#S256"] + "=") == bytes.fromhex(signer.thumbprint_sha256)
    assert base64.urlsafe_b64decode(header["x5t"] + "=") == bytes.fromhex(signer.thumbprint_sha1)


def test_a_new_key_is_rsa_3072_and_its_certificate_is_self_signed_for_the_asked_end() -> None:
    given = make_certificate()
    current = parse_certificate(given["certificateBody"], given["privateKey"], START)
    made = new_certificate(current, "00000000-0000-0000-0000-0000000000aa", START + timedelta(days=63), START)
    cert = x509.load_pem_x509_certificate(made.certificate_pem.encode())
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc == START + timedelta(days=63)
    assert cert.not_valid_before_utc <= START
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    assert made.certificate_der == cert.public_bytes(serialization.Encoding.DER)
    assert "PRIVATE KEY" in made.private_key_pem and "PRIVATE KEY" not in repr(made)
    parse_certificate(made.certificate_pem, made.private_key_pem, START + timedelta(days=1))  # it parses back


async def test_an_owner_s_certificate_listed_under_another_key_identifier_is_not_rotated_past_and_left_live() -> None:
    """(Review C2.) Uploaded with a key identifier of the owner's own (``-CustomKeyIdentifier``), the certificate is
    not found by its thumbprint: the rotation left it live on the application, and said it had revoked it. It
    stops before adding anything, and says why and what to do."""
    h = Harness(method="certificate")
    app = h.fakes.world.application()
    key, given = h.fakes.world.add_certificate(app.client_id, "given by the owner")
    key.thumbprint = "prod"  # customKeyIdentifier is not the SHA-1 thumbprint
    record = await h.api.create("azure-client-secrets", {
        "name": "cert", "method": "certificate",
        "credentials": {"tenantId": "11111111-1111-1111-1111-111111111111", "clientId": app.client_id, **given}})
    after = await h.api.update("azure-client-secrets", record.id, {"isAutoRotationEnabled": True, "rotation": {
        "rotationInterval": INTERVAL, "rotateAt": "03:00", "timeZone": "UTC"}})  # (saved; its rotation tells)
    assert after.rotation.status == "failed" and after.rotation.rotation_id is None
    assert "not listed on the application under its thumbprint" in (after.rotation.message or "")
    assert list(h.fakes.world.apps[app.client_id].keys) == [key.key_id]  # nothing added; the owner's still there
    assert h.check() == []


async def test_the_owner_s_certificate_also_on_the_application_for_token_encryption_keeps_that_key() -> None:
    """Entra lets one certificate be on an application twice: to verify sign-ins and to encrypt tokens (usage
    Encrypt). The rotation revokes the sign-in key it replaced, never the encryption key listed first under the
    same thumbprint (it removed that one, broke token encryption and left the replaced credential live: review T);
    moving to federated with revokeOriginal likewise."""
    for move in (False, True):
        h = Harness(method="certificate")
        app = h.fakes.world.application()
        key, given = h.fakes.world.add_certificate(app.client_id, "given by the owner")
        encrypting = Key("eeeeeeee-0000-0000-0000-000000000001", key.secret, "token encryption", key.end, False,
                         key.thumbprint, key.public_key, usage="Encrypt")
        app.keys = {encrypting.key_id: encrypting, **app.keys}
        record = await h.api.create("azure-client-secrets", {
            "name": "cert", "method": "certificate",
            "credentials": {"tenantId": "11111111-1111-1111-1111-111111111111", "clientId": app.client_id, **given}})
        if move:
            record = await h.api.migrate_to_federated("azure-client-secrets", record.id, {"revokeOriginal": True})
            assert record.method == "federated"
        else:
            record = await h.api.update("azure-client-secrets", record.id, {
                "isAutoRotationEnabled": True,
                "rotation": {"rotationInterval": INTERVAL, "rotateAt": "03:00", "timeZone": "UTC"}})
            assert record.rotation.status == "succeeded", record.rotation.message
        assert key.key_id not in app.keys, move
        assert app.keys[encrypting.key_id] is encrypting, move
