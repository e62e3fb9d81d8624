"""The OAuth callback's first step (``shared.oauth_callback``): an answer that completes no pending sign-in is
refused, without the flow, exactly as the flow refuses it; a pending state is left for the flow to consume."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared import wiring
from shared.audit import RequestContext, acting
from shared.oauth import OAuthFailed
from shared.oauth_callback import refuse_unless_pending
from shared.records import Actor
from tests.fakes import FakeStates, build_fakes

UNKNOWN = "2026030405." + "u" * 43  # shaped like a state of ours, never stored
ANSWERS = [
    {},
    {"code": "c"},
    {"code": "c", "state": UNKNOWN},
    {"code": "c", "state": "not-a-state-of-ours"},
    {"code": "", "state": UNKNOWN},
    {"error": "access_denied", "error_description": "<b>no</b> call 555-0100", "state": UNKNOWN},
    {"error": "access_denied"},
    {"code": "c", "state": UNKNOWN, "redirect_uri": "https://evil.example"},
    {"code": "c", "state": UNKNOWN, "session_state": "x", "iss": "https://login.microsoftonline.com"},
    {"code": "x" * 9000, "state": UNKNOWN},
    {"code": "c", "state": "a\x00b"},
    {"code": "c", "state": "s" * 257},
]


class Lookup:
    """``shared.ports.OAuthStateLookup`` over the fake state store, recording what it was asked."""

    def __init__(self, states: FakeStates) -> None:
        self.states = states
        self.asked: list[str] = []

    async def pending(self, state: str) -> bool:
        self.asked.append(state)
        return state in self.states.states


@pytest.mark.parametrize("answer", ANSWERS, ids=range(len(ANSWERS)))
async def test_an_answer_without_a_pending_sign_in_is_refused_as_the_flow_refuses_it(answer: dict[str, str]) -> None:
    fakes = build_fakes()
    with pytest.raises(OAuthFailed) as by_flow:
        await wiring.services(fakes.adapters).oauth.complete(answer)
    with pytest.raises(OAuthFailed) as first_step:
        await refuse_unless_pending(Lookup(fakes.states), answer)
    assert type(first_step.value) is type(by_flow.value)
    assert first_step.value.to_problem("/x") == by_flow.value.to_problem("/x")
    assert fakes.audit.records == []  # neither audits an answer that completes nothing


async def test_the_state_is_looked_up_only_when_the_answer_is_well_formed() -> None:
    fakes = build_fakes()
    lookup = Lookup(fakes.states)
    for answer in ({"code": "c"}, {"code": "x" * 9000, "state": UNKNOWN}, {"code": "c", "state": "a\x00b"}):
        with pytest.raises(OAuthFailed):
            await refuse_unless_pending(lookup, answer)
    assert lookup.asked == []
    with pytest.raises(OAuthFailed, match="unknown or was already used"):
        await refuse_unless_pending(lookup, {"code": "c", "state": UNKNOWN})
    assert lookup.asked == [UNKNOWN]


async def test_a_pending_state_is_left_to_the_flow_which_consumes_it() -> None:
    fakes = build_fakes()
    flow = wiring.services(fakes.adapters).oauth
    with acting(RequestContext(Actor("oid-1", "Ada", "user"))):
        url = await flow.start("azure-key-vault", {"name": "kv-oauth"})
    state = url.split("state=", 1)[1].split("&", 1)[0]
    assert state in fakes.states.states
    lookup = Lookup(fakes.states)
    await refuse_unless_pending(lookup, {"code": "c", "state": state})  # decides nothing: no refusal
    assert state in fakes.states.states, "the first step consumed the state"
    # Expired meanwhile: still pending to the lookup; the flow consumes it and says why, as before.
    fakes.clock.advance(timedelta(minutes=11))
    await refuse_unless_pending(lookup, {"code": "c", "state": state})
    with pytest.raises(OAuthFailed, match="expired"):
        await flow.complete({"code": "c", "state": state})
    assert state not in fakes.states.states
    with pytest.raises(OAuthFailed, match="unknown or was already used"):  # a replay: refused by the first step
        await refuse_unless_pending(lookup, {"code": "c", "state": state})

