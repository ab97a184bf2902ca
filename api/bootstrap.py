"""The built-in users: read from ``SPOTEX_USERS_FILE`` or the embedded defaults, registered through
the log at start-up.

The users file is JSON::

    {"users": [
      {"username": "ops", "password": "a long secret", "roles": ["admin"]},
      {"username": "carol", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$...", "roles": ["trader"]}
    ]}

Each entry has ``username``, ``roles`` (any of ``trader``, ``admin``, ``auditor``; default
``["trader"]``) and either ``password`` (hashed with argon2 before it is appended) or
``password_hash`` (an argon2 hash, so no clear password sits in the file). Registration is a
``RegisterUser`` request with no actor (the operator's own bootstrap); the user's id is the
request's id, derived from the username, so a restart finds it registered already: the store
answers with a conflict (a new argon2 salt makes the body differ) and that is fine. A password
in the file is therefore only used the first time a username is registered.

In production (``SPOTEX_ENV=production``) an entry whose password is one of the embedded
defaults is refused, as the signing key is by ``Settings.check_production``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from api.security import ROLES, hash_password, verify_password
from domain.commands import RegisterUser, is_username, request_id_for
from engine.log import Logs, RequestConflict
from spotex.config import DEFAULT_USERS, ConfigError, Settings


@dataclass(frozen=True, slots=True)
class BuiltinUser:
    username: str
    roles: tuple[str, ...]
    password: str | None = None
    password_hash: str | None = None


def _entry(raw: Any, where: str) -> BuiltinUser:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each user must be an object")
    unknown = set(raw) - {"username", "roles", "password", "password_hash"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    username = raw.get("username")
    if not isinstance(username, str) or not is_username(username):
        raise ConfigError(f"{where}: username {username!r} must match [a-z][a-z0-9_.-]{{2,31}}")
    roles = raw.get("roles", ["trader"])
    if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
        raise ConfigError(f"{where}: roles of {username} must be a list of {', '.join(ROLES)}")
    password, password_hash = raw.get("password"), raw.get("password_hash")
    if (password is None) == (password_hash is None):
        raise ConfigError(f"{where}: {username} needs exactly one of password, password_hash")
    if password is not None and (not isinstance(password, str) or not password):
        raise ConfigError(f"{where}: the password of {username} must be a non-empty string")
    if password_hash is not None and not str(password_hash).startswith("$argon2"):
        raise ConfigError(f"{where}: the password_hash of {username} must be an argon2 hash")
    return BuiltinUser(username, tuple(roles), password, password_hash)


def load_users_file(path: Path) -> list[BuiltinUser]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"SPOTEX_USERS_FILE {path}: cannot read it ({exc})") from None
    entries = data.get("users") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"SPOTEX_USERS_FILE {path}: expected {{\"users\": [...]}}")
    users = [_entry(e, f"SPOTEX_USERS_FILE {path}") for e in entries]
    names = [u.username for u in users]
    if len(set(names)) != len(names):
        raise ConfigError(f"SPOTEX_USERS_FILE {path}: a username appears twice")
    return users


def builtin_users(settings: Settings) -> list[BuiltinUser]:
    """The users file's users, or the embedded defaults; checked in production."""
    if settings.users_file is None:
        embedded = DEFAULT_USERS.items()
        users = [BuiltinUser(name, tuple(roles), password) for name, (password, roles) in embedded]
    else:
        users = load_users_file(settings.users_file)
    if settings.production:
        defaults = sorted({password for password, _ in DEFAULT_USERS.values()})
        for u in users:
            if u.password in defaults or (
                u.password_hash is not None and any(verify_password(u.password_hash, d) for d in defaults)
            ):
                raise ConfigError(f"user {u.username} has a built-in default password; refused in production")
    return users


def register_builtin_users(logs: Logs, users: list[BuiltinUser], now: datetime) -> list[str]:
    """Append a ``RegisterUser`` for each user; returns the usernames registered just now."""
    created = []
    for u in users:
        password_hash = u.password_hash or hash_password(u.password or "")
        command = RegisterUser.model_validate(
            {"username": u.username, "password_hash": password_hash, "roles": list(u.roles)}
        )
        request_id = request_id_for(command, None)
        assert request_id is not None
        try:
            if logs.append_request(request_id, None, command.to_log(), now).created:
                created.append(u.username)
        except RequestConflict:
            pass  # registered at an earlier start (another salt): the log keeps the first
    return created
