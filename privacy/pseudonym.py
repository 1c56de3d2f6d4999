"""Keyed pseudonyms (HMAC-SHA256) for ids, DICOM UIDs and per-patient date shifts.

A pseudonym is ``HMAC-SHA256(secret, namespace + value)`` written in a short alphabet. The
same secret gives the same pseudonym for the same value (so a cohort de-identified twice,
or at two sites sharing a key, links up); without the secret a pseudonym cannot be reversed
by hashing candidate MRNs. The secret comes from a file or from the environment variable
``CLINFUSE_DEID_SECRET``; it is never written to any output.

>>> p = Pseudonymizer(b"0123456789abcdef0123456789abcdef")
>>> p.pseudonym("MRN-0001", namespace="patient", prefix="P")  # doctest: +SKIP
'P4XK2MZQ7R3TLB6W'
>>> p.uid("1.2.840.113619.2.55.3")  # doctest: +SKIP
'2.25.1786...'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from privacy.errors import SecretKeyError

__all__ = [
    "ENV_VAR",
    "MIN_SECRET_BYTES",
    "Pseudonymizer",
    "load_secret",
]

ENV_VAR = "CLINFUSE_DEID_SECRET"
"""Environment variable read by :func:`load_secret` when no secret file is given."""

MIN_SECRET_BYTES = 16
"""Shortest accepted secret (bytes after stripping whitespace); 32 random bytes recommended."""

_HOW_TO = (
    'create one with: python -c "import secrets; print(secrets.token_hex(32))" > deid.key '
    "(keep it at the site, never next to the output)"
)


def load_secret(secret_file: str | Path | None = None, *, env_var: str = ENV_VAR) -> bytes:
    """Read the pseudonymisation secret from ``secret_file`` or the environment.

    Leading and trailing whitespace (a final newline) is stripped.

    Args:
        secret_file: a file holding the secret; if ``None``, ``$CLINFUSE_DEID_SECRET`` is used.
        env_var: the environment variable to read instead of a file.

    Returns:
        The secret as bytes.

    Raises:
        SecretKeyError: no file and no variable, the file is unreadable, or the secret is
            empty or shorter than :data:`MIN_SECRET_BYTES`.
    """
    if secret_file is not None:
        path = Path(secret_file)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise SecretKeyError(
                f"cannot read the secret file {path}: {e.strerror or e}; {_HOW_TO}"
            ) from e
        where = f"secret file {path}"
    else:
        value = os.environ.get(env_var)
        if value is None:
            raise SecretKeyError(
                f"no secret given: pass a secret file or set ${env_var}; "
                "pseudonyms without a secret can be reversed by hashing known ids; " + _HOW_TO
            )
        raw = value.encode("utf-8")
        where = f"${env_var}"
    secret = raw.strip()
    if not secret:
        raise SecretKeyError(f"the {where} is empty; {_HOW_TO}")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretKeyError(
            f"the {where} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed; "
            + _HOW_TO
        )
    return secret


class Pseudonymizer:
    """Deterministic keyed pseudonyms, UIDs and date shifts.

    Args:
        secret: the site secret (bytes or str, at least :data:`MIN_SECRET_BYTES` long).
        max_shift_days: per-patient date shifts are drawn from ``[-max_shift_days, -1]``.

    Raises:
        SecretKeyError: the secret is empty or too short.
    """

    def __init__(self, secret: bytes | str, *, max_shift_days: int = 365) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        key = key.strip()
        if len(key) < MIN_SECRET_BYTES:
            raise SecretKeyError(
                f"secret of {len(key)} bytes given; at least {MIN_SECRET_BYTES} are needed; "
                + _HOW_TO
            )
        if max_shift_days < 1:
            raise ValueError(f"max_shift_days must be >= 1, got {max_shift_days}")
        self._key = key
        self.max_shift_days = int(max_shift_days)
        self._avoid: dict[str, frozenset[int]] = {}

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(key_id={self.key_id!r}, max_shift_days={self.max_shift_days})"

    def digest(self, value: str, namespace: str = "") -> bytes:
        """``HMAC-SHA256(secret, namespace ‖ 0x1f ‖ value)`` (32 bytes)."""
        msg = namespace.encode("utf-8") + b"\x1f" + str(value).encode("utf-8")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    @property
    def key_id(self) -> str:
        """A short fingerprint of the key (safe to report; it does not reveal the key)."""
        return self.digest("key-id", "privacy.key").hex()[:12]

    def pseudonym(
        self, value: str, namespace: str = "id", *, prefix: str = "", length: int = 12
    ) -> str:
        """A keyed pseudonym of ``value``: ``prefix`` + ``length`` base32 characters (A–Z, 2–7).

        Different namespaces give unrelated pseudonyms for the same value (a case id and a
        patient id that happen to be equal do not collide).
        """
        if not 4 <= length <= 52:
            raise ValueError(f"length must be in 4..52, got {length}")
        code = base64.b32encode(self.digest(value, namespace)).decode("ascii").rstrip("=")
        return prefix + code[:length]

    def uid(self, old_uid: str) -> str:
        """A DICOM UID derived from ``old_uid``: ``2.25.<128-bit integer>`` (≤ 44 characters).

        The same input UID always maps to the same output UID under one key, so series,
        studies and references still link across files.
        """
        n = int.from_bytes(self.digest(str(old_uid).strip(), "dicom.uid")[:16], "big")
        return f"2.25.{n}"

    def date_shift_days(self, patient_key: str) -> int:
        """The patient's date shift in days, in ``[-max_shift_days, -1]`` (never 0).

        Keyed on the patient; a shift set aside with :meth:`avoid_date_shifts` is replaced
        by the next keyed candidate (deterministic too), so shifting one of the patient's
        dates never lands on another of their original dates.
        """
        avoid = self._avoid.get(str(patient_key), frozenset())
        shift = 0
        for k in range(64):
            namespace = "date.shift" if k == 0 else f"date.shift.{k}"
            n = int.from_bytes(self.digest(str(patient_key), namespace)[:8], "big")
            shift = -(1 + n % self.max_shift_days)
            if shift not in avoid:
                return shift
        free = [s for s in range(-1, -self.max_shift_days - 1, -1) if s not in avoid]
        return free[0] if free else shift

    def avoid_date_shifts(self, patient_key: str, shifts: Iterable[int]) -> None:
        """Set aside date shifts for one patient (see :meth:`date_shift_days`): the gaps
        between the patient's own dates, in days, each as a negative shift."""
        self._avoid[str(patient_key)] = frozenset(int(s) for s in shifts)

    def choice(self, value: str, namespace: str, options: list[str] | tuple[str, ...]) -> str:
        """Pick one of ``options`` deterministically from ``value`` (for surrogates)."""
        if not options:
            raise ValueError("options must not be empty")
        n = int.from_bytes(self.digest(value, namespace)[:8], "big")
        return options[n % len(options)]
