"""Access tokens: a verified token is remembered until its ``exp``, and never past it.

Given a token issued for 15 minutes, when it is decoded again (from the cache), then the same
principal comes back; when the clock passes its ``exp``, then it is refused like any expired
token, cached or not; a token with a bad signature is refused even right after the good one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.security import TOKEN_TTL, InvalidToken, Principal, decode_token, issue_token

SECRET = "s" * 40
ALICE = Principal("8b0a6b50-6c5e-4ad0-9d9a-6bde1f1d0d11", "alice", ("trader",))


def test_a_cached_token_is_refused_once_expired() -> None:
    now = datetime.now(UTC)
    token = issue_token(SECRET, ALICE, now)
    assert decode_token(SECRET, token) == ALICE
    assert decode_token(SECRET, token) == ALICE  # the cached path
    expiry = (now + TOKEN_TTL).timestamp()
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token, now=int(expiry) + 1)
    with pytest.raises(InvalidToken):  # and it stays refused
        decode_token(SECRET, token, now=int(expiry) + 2)


def test_an_expired_token_is_refused_though_it_was_never_cached() -> None:
    token = issue_token(SECRET, ALICE, datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(InvalidToken):
        decode_token(SECRET, token)


def test_a_token_verified_with_one_secret_is_not_accepted_with_another() -> None:
    token = issue_token(SECRET, ALICE, datetime.now(UTC))
    assert decode_token(SECRET, token) == ALICE
    with pytest.raises(InvalidToken):
        decode_token("t" * 40, token)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(InvalidToken):
        decode_token(SECRET, forged)
