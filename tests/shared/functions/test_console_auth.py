"""The console's sign-in routes (``shared.functions.console_auth``) against in-memory fakes: each ``session.start``
and ``session.end`` recorded ``started`` gets its outcome, a sign-out is never refused for its audit record, and a
sign-out forged against a person signed in is recorded as refused (review of the audit, 4 to 6)."""

from __future__ import annotations

from typing import Any

import azure.functions as func
import pytest

from shared import wiring
from shared.audit import AuditLog
from shared.errors import UpstreamError
from shared.functions.console_auth import console_callback, console_logout
from shared.sessions import CSRF_HEADER, SESSION_COOKIE, Session, login_cookie
from tests.fakes import FakeSessions, build_fakes
from tests.shared.test_sessions import READER, SITE, Endpoint, sessions, sign_in


class Sessions(FakeSessions):
    """The session store, whose writes (``create``) or deletions (``delete``) can be made to fail."""

    failing: tuple[str, ...] = ()

    async def create(self, session: Session) -> None:
        if "create" in self.failing:
            raise UpstreamError("Table Storage failed (injected)")
        await super().create(session)

    async def delete(self, bucket: str, key: str) -> None:
        if "delete" in self.failing:
            raise UpstreamError("Table Storage failed (injected)")
        await super().delete(bucket, key)


class Console:
    """The sign-in routes wired to fakes: a session store, the audit log, a sign-in against the test tenant."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fakes = build_fakes()
        self.store = Sessions()
        self.sessions = sessions(self.fakes.clock, self.store)
        self.endpoint = Endpoint()
        self.sign_in = sign_in(self.fakes.clock, self.store, self.endpoint)
        monkeypatch.setattr(wiring, "sessions", lambda: self.sessions)
        monkeypatch.setattr(wiring, "sign_in", lambda: self.sign_in)
        monkeypatch.setattr(wiring, "audit_log", lambda: AuditLog(self.fakes.audit, self.fakes.clock))

    def records(self, action: str) -> list[tuple[str, str | None]]:
        return [(r.outcome, r.detail) for r in self.fakes.audit.records if r.action == action]

    async def signed_in(self) -> tuple[str, Session]:
        return await self.sessions.start(READER, "Ada")


def sign_out(session_id: str | None, csrf_token: str | None, origin: str | None = SITE) -> func.HttpRequest:
    headers = {"cookie": f"{SESSION_COOKIE}={session_id}"} if session_id else {}
    if origin is not None:
        headers["origin"] = origin
    if csrf_token is not None:
        headers[CSRF_HEADER] = csrf_token
    return func.HttpRequest("POST", f"{SITE}/auth/logout", headers=headers, body=b"")


def cleared(response: func.HttpResponse) -> bool:
    return any(line.startswith(f"{SESSION_COOKIE}=;") for line in response.headers.get_all("Set-Cookie"))


async def test_a_sign_out_is_recorded_before_and_after_it_ends_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(monkeypatch)
    session_id, session = await console.signed_in()
    response = await console_logout(sign_out(session_id, session.csrf_token))
    assert response.status_code == 204 and cleared(response)
    assert console.store.sessions == {}
    detail = f"console session {session.key[:12]}"
    assert console.records("session.end") == [("started", detail), ("succeeded", detail)]


async def test_a_sign_out_ends_the_session_and_clears_the_cookie_while_the_audit_log_cannot_be_written(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """(Review of the audit, 4.) Sign-out failed closed: while the audit table could not be written it answered 503,
    the session stayed live and the cookie was not cleared; a person could not sign out of a shared machine. The
    records that cannot be written go to the log (``AuditLog.record``)."""
    console = Console(monkeypatch)
    session_id, session = await console.signed_in()
    console.fakes.world.fail_next("audit.append", times=10)
    response = await console_logout(sign_out(session_id, session.csrf_token))
    assert response.status_code == 204 and cleared(response)
    assert console.store.sessions == {}
    assert console.fakes.audit.records == []
    logged = [r for r in caplog.records if getattr(r, "audit_action", None) == "session.end"]
    assert [getattr(r, "audit_outcome", None) for r in logged] == ["started", "succeeded"]


async def test_a_sign_out_whose_session_cannot_be_deleted_records_that_it_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the audit, 5.) ``session.end`` stayed ``started`` when Table Storage failed to delete the session.
    The cookie is kept: the page says sign-out failed, and the person tries again."""
    console = Console(monkeypatch)
    session_id, session = await console.signed_in()
    console.store.failing = ("delete",)
    response = await console_logout(sign_out(session_id, session.csrf_token))
    assert response.status_code == 502 and not cleared(response)
    detail = f"console session {session.key[:12]}"
    assert console.records("session.end") == [("started", detail), ("failed", f"{detail}: UpstreamError")]


async def test_a_sign_in_whose_session_cannot_be_written_records_that_it_failed_and_the_session_it_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the audit, 5.) ``session.start`` stayed ``started`` when Table Storage failed to write the new
    session, and the session the browser still presented, ended by then, was recorded nowhere."""
    console = Console(monkeypatch)
    previous_id, previous = await console.signed_in()
    _, state = await console.sign_in.begin(None)
    [pending] = console.store.logins.values()
    console.endpoint.claims = {"nonce": pending.nonce}
    console.store.failing = ("create",)
    request = func.HttpRequest("GET", f"{SITE}/auth/callback", params={"code": "the-code", "state": state},
                               headers={"cookie": f"{login_cookie(state)}={state}; {SESSION_COOKIE}={previous_id}"},
                               body=b"")
    response = await console_callback(request)
    assert response.status_code == 502 and "You are not signed in" in response.get_body().decode()
    assert console.store.sessions == {}  # the previous session is ended, and no new one was written
    assert console.records("session.start") == [
        ("started", "console sign-in"),
        ("failed", f"console sign-in: UpstreamError; session {previous.key[:12]} ended")]


FORGED = {"no-csrf-token": {"csrf_token": None}, "another-csrf-token": {"csrf_token": "y" * 43},
          "foreign-origin": {"origin": "https://evil.example"}, "no-origin": {"origin": None}}


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
async def test_a_sign_out_forged_against_a_person_signed_in_is_refused_and_recorded(
        monkeypatch: pytest.MonkeyPatch, forged: dict[str, Any]) -> None:
    """(Review of the audit, 6.) A sign-out with a person's session cookie but without the service's Origin or the
    session's CSRF token (a forgery's attempt) was refused and recorded nowhere, where every /api/v1 route records
    one (``access.refused``, naming the person whose session it was sent with)."""
    console = Console(monkeypatch)
    session_id, session = await console.signed_in()
    response = await console_logout(sign_out(session_id, **{"csrf_token": session.csrf_token, **forged}))
    assert response.status_code == 403 and not cleared(response)
    assert console.store.sessions  # still signed in
    [refused] = console.fakes.audit.records
    assert (refused.action, refused.outcome, refused.actor.id) == ("access.refused", "403", READER.id)
    assert (refused.detail or "").startswith("POST /auth/logout: ")


@pytest.mark.parametrize("session_id", [None, "2099010100." + "a" * 43, "not-a-session"],
                         ids=["no-cookie", "no-such-session", "malformed"])
async def test_a_forged_sign_out_that_names_nobody_is_refused_and_not_recorded(
        monkeypatch: pytest.MonkeyPatch, session_id: str | None) -> None:
    """As on /api/v1, a request that names nobody is not recorded: anyone could fill the audit log with them."""
    console = Console(monkeypatch)
    response = await console_logout(sign_out(session_id, "x", origin="https://evil.example"))
    assert response.status_code == 403
    assert console.fakes.audit.records == []
    nothing = await console_logout(sign_out(session_id, "x"))  # from the service's origin: nothing to end
    assert nothing.status_code == 204 and cleared(nothing) and console.fakes.audit.records == []


async def test_a_callback_with_a_lone_surrogate_state_is_refused_with_the_usual_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Fuzzing review.) The callback named the state's cookie before it checked the state: a lone surrogate (which
    no browser sends, but the function can be handed) raised out of the function instead of the refusal's page."""
    console = Console(monkeypatch)
    request = func.HttpRequest("GET", f"{SITE}/auth/callback", params={"code": "c", "state": "\ud800"}, headers={},
                               body=b"")
    response = await console_callback(request)
    assert response.status_code == 400 and "You are not signed in" in response.get_body().decode()
    assert console.store.sessions == {}
