"""Local reviewer accounts: scrypt password hashes, constant-time checks.

A password is stored as ``scrypt$<n>$<r>$<p>$<salt hex>$<key hex>``: a fresh
16-byte random salt per password and :func:`hashlib.scrypt` (n=2**14, r=8, p=1,
32-byte key; about 16 MiB and 50 ms per check). Verification compares keys with
:func:`hmac.compare_digest`, and an unknown username costs the same scrypt call
as a known one, so timing does not reveal which usernames exist.

Add an account from the command line (the password is asked twice, never echoed)::

    clinfuse app RUN --add-reviewer alice

or from Python with :func:`add_reviewer`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from clinfuse.errors import ConfigError
from clinfuse.review.store import ReviewStore

if TYPE_CHECKING:
    from clinfuse.review.runview import RunView

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "add_reviewer",
    "authenticate",
    "check_username",
    "first_account_commands",
    "hash_password",
    "reset_password",
    "verify_password",
]


def first_account_commands(view: RunView, db: str | Path) -> list[str]:
    """What to run when the database ``db`` of the app on ``view`` has no account yet: add
    one, and for a scored cohort's own database whose run's database has accounts, copy
    those."""
    from clinfuse.review.store import default_db_path, read_reviewers

    command = view.app_command
    out = [f"{command} --add-reviewer YOUR_NAME"]
    run_db = default_db_path(view.run)
    if (
        view.scored is not None
        and run_db.is_file()
        and run_db.resolve() != Path(db).resolve()
        and read_reviewers(run_db)  # read-only: the login page renders this often
    ):
        out.append(f"{command} --copy-reviewers-from {run_db}")
    return out


MIN_PASSWORD_LENGTH = 8
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
# compared against when the username is unknown (same cost as a real check)
_DUMMY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32


def check_username(username: str) -> str:
    """``username`` stripped, if it is 1–64 letters, digits or ``. _ @ + -``.

    Raises:
        ConfigError: otherwise.
    """
    name = str(username).strip()
    if not _USERNAME.match(name):
        raise ConfigError(
            f"username {name!r} is not allowed",
            field="username",
            hint="use 1-64 letters, digits or . _ @ + - (starting with a letter or digit)",
        )
    return name


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The storable scrypt hash of ``password`` (random salt unless given).

    Raises:
        ConfigError: the password is shorter than :data:`MIN_PASSWORD_LENGTH`.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN, maxmem=64 * 2**20
    )
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password` (constant-time compare)."""
    try:
        scheme, n, r, p, salt_hex, key_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, key = bytes.fromhex(salt_hex), bytes.fromhex(key_hex)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(key),
            maxmem=64 * 2**20,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, key)


def add_reviewer(
    store: ReviewStore, username: str, password: str, *, display_name: str | None = None
) -> str:
    """Create a local reviewer account; returns the username.

    Raises:
        ConfigError: bad username, short password, or the username is taken.
    """
    name = check_username(username)
    store.insert_reviewer(
        name,
        display_name=(display_name or name).strip() or name,
        auth="password",
        password_hash=hash_password(password),
    )
    return name


def reset_password(store: ReviewStore, username: str, password: str) -> None:
    """Give an existing local account a new password (audited)."""
    store.set_password_hash(check_username(username), hash_password(password), actor="cli")


def authenticate(store: ReviewStore, username: str, password: str) -> str | None:
    """The username when the credentials are right (and the account active), else None.

    Successful and failed attempts are written to the audit log (never the password).
    """
    name = str(username).strip()
    row = store.reviewer(name) if _USERNAME.match(name) else None
    stored = row["password_hash"] if row and row["auth"] == "password" else None
    ok = verify_password(password, stored or _DUMMY_HASH) and stored is not None
    ok = ok and bool(row and row["active"])
    store.log_event(name if row else "?", "login" if ok else "login_failed")
    return name if ok else None
