"""The stand-in's token checks answer the same whether a token is new to it or already verified once (a known
token skips only the signature and format checks, never its times or its audience)."""

from __future__ import annotations

import time

import pytest

from localdev.standin.tokens import InvalidAccessToken, Signer

CLAIMS = {"aud": "https://vault.azure.net", "iss": "https://standin/t/v2.0", "tid": "t", "appid": "a"}


def test_a_known_token_gives_the_same_claims_and_they_cannot_be_changed_through_the_answer() -> None:
    signer = Signer()
    token = signer.issue(dict(CLAIMS))
    first = signer.verify(token, audience="https://vault.azure.net")
    first["tid"] = "changed"
    again = signer.verify(token, audience="https://vault.azure.net")
    assert again["tid"] == "t"
    assert again == {**first, "tid": "t"}


def test_a_known_token_that_expires_is_refused_as_a_new_one_would_be() -> None:
    signer = Signer()
    token = signer.issue(dict(CLAIMS), lifetime=60)
    assert signer.verify(token)["appid"] == "a"
    signer.clock = lambda: time.time() + 60 + 29  # within the 30 s leeway
    assert signer.verify(token)["appid"] == "a"
    signer.clock = lambda: time.time() + 60 + 31
    with pytest.raises(InvalidAccessToken, match=r"^Token expired$"):
        signer.verify(token)
    expired = signer.issue(dict(CLAIMS), lifetime=-31)  # the answer for a token never seen before
    with pytest.raises(InvalidAccessToken, match=r"^Token expired$"):
        signer.verify(expired)


def test_a_known_token_is_still_checked_for_another_audience_and_a_changed_one_is_not_known() -> None:
    signer = Signer()
    token = signer.issue(dict(CLAIMS))
    assert signer.verify(token)["aud"] == "https://vault.azure.net"
    with pytest.raises(InvalidAccessToken, match="Invalid audience"):
        signer.verify(token, audience="https://graph.microsoft.com")
    head, body, signature = token.split(".")
    with pytest.raises(InvalidAccessToken, match="Invalid token"):
        signer.verify(f"{head}.{body}.{signature[:-4]}AAAA")
    other = Signer()
    with pytest.raises(InvalidAccessToken, match="Invalid token"):
        other.verify(token)  # another stand-in's key
