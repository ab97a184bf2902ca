"""Passwords (argon2id) and access tokens (JWT, HS256 only).

A password exists in clear only in the request that carries it: it is hashed before it is
appended (the log keeps the argon2 hash) and verified against the users read model at login.
Tokens are signed with ``SPOTEX_JWT_SECRET``; decoding pins ``algorithms=["HS256"]`` (so ``none``
and algorithm confusion are refused) and requires ``sub``, ``iat`` and ``exp``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ALGORITHM = "HS256"
TOKEN_TTL = timedelta(minutes=15)
ROLES = ("trader", "admin", "auditor")

_hasher = PasswordHasher()
# Verified when a username is unknown, so that a login takes as long either way.
_DUMMY_HASH = _hasher.hash("spotex-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the token says."""

    user_id: str
    username: str
    roles: tuple[str, ...]

    def has(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)


class InvalidToken(Exception):
    pass


def issue_token(secret: str, principal: Principal, now: datetime, ttl: timedelta = TOKEN_TTL) -> str:
    claims = {
        "sub": principal.user_id,
        "name": principal.username,
        "roles": list(principal.roles),
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens whose signature and claims were verified, with their expiry: a client sends the same
# token with every request until it expires, and checking an HMAC and parsing the claims again
# each time is a large share of a small request's cost. Only verified tokens are kept, each
# until its ``exp`` (checked on every use, as ``jwt.decode`` would), at most ``VERIFIED_MAX``.
VERIFIED_MAX = 10_000
_verified: OrderedDict[tuple[str, str], tuple[Principal, int]] = OrderedDict()
_verified_lock = threading.Lock()


def decode_token(secret: str, token: str, now: float | None = None) -> Principal:
    key = (secret, token)
    at = time.time() if now is None else now
    hit = _verified.get(key)
    if hit is not None:
        if at < hit[1]:
            return hit[0]
        with _verified_lock:
            _verified.pop(key, None)
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub"]}
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    sub, name, roles = claims.get("sub"), claims.get("name"), claims.get("roles")
    if not isinstance(sub, str) or not isinstance(name, str) or not isinstance(roles, list):
        raise InvalidToken("the token's claims are incomplete")
    principal = Principal(sub, name, tuple(r for r in roles if r in ROLES))
    exp = claims["exp"]
    if not at < exp:  # (``now`` given: the caller's clock decides, as it does for the cache)
        raise InvalidToken("the token has expired")
    if isinstance(exp, int) and not isinstance(exp, bool):
        with _verified_lock:
            _verified[key] = (principal, exp)
            if len(_verified) > VERIFIED_MAX:
                _verified.popitem(last=False)
    return principal


def bearer_principal(secret: str, headers: Iterable[tuple[bytes, bytes]]) -> Principal | None:
    """The caller of an ASGI request by its ``Authorization: Bearer`` token, or None (no token,
    another scheme, or a token that does not verify)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            try:
                return decode_token(secret, token)
            except InvalidToken:
                return None
    return None
