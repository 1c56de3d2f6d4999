"""The review store: reviewers' decisions in SQLite, with an append-only audit trail.

One SQLite file holds three tables:

``reviewers``
    local accounts (``username``, display name, scrypt password hash) and
    accounts that log in through OIDC (``auth = 'oidc'``, no password).
``reviews``
    one row per submitted decision: case, reviewer, ``agree`` / ``disagree`` /
    ``uncertain``, free-text comment, optional corrected label, the fused risk
    and uncertainty band *as shown* to the reviewer, the decision threshold,
    and the model version (the run fingerprint). A changed mind is a new row
    whose ``supersedes`` names the reviewer's previous row for that case;
    SQLite triggers refuse ``UPDATE`` and ``DELETE`` on this table.
``audit_log``
    every write (review saved, reviewer added, password changed, login),
    append-only as well.

Concurrency: the database runs in WAL mode (readers never block the writer);
each write is one ``BEGIN IMMEDIATE`` transaction on its own connection, with a
30 s busy timeout, so several reviewers (Streamlit sessions are threads, and
several app processes may share a file) saving at once lose nothing. All SQL
is parameterized.

Schema versions: ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; opening
a database written by a newer clinfuse is refused, an older one is migrated in
a transaction.

>>> store = ReviewStore("reviews.sqlite")  # doctest: +SKIP
>>> store.add_review(case_id="case0001", reviewer="alice", decision="agree",
...                  risk_shown=0.82, threshold=0.5, model_version="3f2a…")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinfuse.errors import ConfigError

__all__ = [
    "DECISIONS",
    "SCHEMA_VERSION",
    "Review",
    "ReviewStore",
    "default_db_path",
    "read_reviewers",
]

SCHEMA_VERSION = 1
"""Version of the database layout this clinfuse writes (``PRAGMA user_version``)."""

DECISIONS: tuple[str, ...] = ("agree", "disagree", "uncertain")
"""What a reviewer can say about the model's risk for a case."""

MAX_COMMENT_CHARS = 10_000

_SCHEMA_V1 = """
CREATE TABLE reviewers (
    reviewer_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    auth          TEXT NOT NULL CHECK (auth IN ('password', 'oidc')),
    password_hash TEXT,
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    TEXT NOT NULL
);
CREATE TABLE reviews (
    review_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id         TEXT NOT NULL,
    reviewer        TEXT NOT NULL REFERENCES reviewers(username),
    decision        TEXT NOT NULL CHECK (decision IN ('agree', 'disagree', 'uncertain')),
    corrected_label INTEGER CHECK (corrected_label IN (0, 1)),
    comment         TEXT NOT NULL DEFAULT '',
    risk_shown      REAL NOT NULL,
    risk_low        REAL,
    risk_high       REAL,
    threshold       REAL NOT NULL,
    model_version   TEXT NOT NULL,
    run_path        TEXT,
    created_at      TEXT NOT NULL,
    supersedes      INTEGER REFERENCES reviews(review_id)
);
CREATE INDEX reviews_by_case ON reviews(case_id, review_id);
CREATE INDEX reviews_by_reviewer ON reviews(reviewer, case_id, review_id);
CREATE TABLE audit_log (
    event_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    case_id   TEXT,
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER reviews_append_only_update BEFORE UPDATE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are append-only: save a new review instead'); END;
CREATE TRIGGER reviews_append_only_delete BEFORE DELETE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are append-only: they cannot be deleted'); END;
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

# version reached -> SQL that migrates from the version before it (none yet beyond v1)
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}


def default_db_path(run: str | Path, predictions: str | Path | None = None) -> Path:
    """Where reviews live unless told otherwise: ``<RUN>.reviews.sqlite`` beside the run,
    or ``<P>.reviews.sqlite`` beside a scored cohort's table ``<P>.csv``.

    Beside, not inside: ``clinfuse train --overwrite`` replaces the run folder
    wholesale, and the audit trail must survive a retrained model (each review
    records the model version it was made against). A scored cohort gets its own file:
    its case ids may repeat the development cohort's for other patients.
    """
    if predictions is not None:
        p = Path(predictions)
        return p.with_name(f"{p.stem}.reviews.sqlite")
    run = Path(run)
    return run.with_name(f"{run.name}.reviews.sqlite")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Review:
    """One saved decision (a row of ``reviews``)."""

    review_id: int
    case_id: str
    reviewer: str
    decision: str
    corrected_label: int | None
    comment: str
    risk_shown: float
    risk_low: float | None
    risk_high: float | None
    threshold: float
    model_version: str
    run_path: str | None
    created_at: str
    supersedes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_REVIEW_COLUMNS = ", ".join(Review.__dataclass_fields__)


class ReviewStore:
    """Reviews, reviewers and the audit log in one SQLite file.

    Args:
        path: the database file (created with its folder when missing).

    Raises:
        ConfigError: the file is not a clinfuse review database, was written by a
            newer clinfuse, or its folder cannot be written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot create the folder for the review database: {e}",
                path=self.path,
                hint="pass --db with a writable location",
            ) from e
        self._migrate()

    # -- connections -------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as e:
            raise ConfigError(
                f"cannot open the review database: {e}",
                path=self.path,
                hint="check the path and its permissions, or pass --db",
            ) from e
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 30000")
        con.execute("PRAGMA foreign_keys = ON")
        return con

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _migrate(self) -> None:
        try:
            con = self._connect()
            try:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                con.execute("BEGIN IMMEDIATE")
                version = int(con.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    con.execute("ROLLBACK")
                    raise ConfigError(
                        f"the review database has schema version {version}; this clinfuse "
                        f"knows up to {SCHEMA_VERSION}",
                        path=self.path,
                        hint="upgrade clinfuse",
                    )
                if version == 0 and self._has_foreign_tables(con):
                    con.execute("ROLLBACK")
                    raise ConfigError(
                        "the file is an SQLite database but not a clinfuse review store",
                        path=self.path,
                        hint="pass --db with a new or clinfuse-made file",
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _split_sql(_MIGRATIONS[target]):
                        con.execute(statement)
                    con.execute(f"PRAGMA user_version = {int(target)}")
                con.execute("COMMIT")
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"cannot use the review database: {e}",
                path=self.path,
                hint="is this an SQLite file? pass --db with a new file",
            ) from e
        self.journal_mode = str(mode).lower()

    @staticmethod
    def _has_foreign_tables(con: sqlite3.Connection) -> bool:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return any(not str(r[0]).startswith("sqlite_") for r in rows)

    @property
    def schema_version(self) -> int:
        with self._read() as con:
            return int(con.execute("PRAGMA user_version").fetchone()[0])

    # -- audit -------------------------------------------------------------------
    @staticmethod
    def _audit(
        con: sqlite3.Connection,
        actor: str,
        action: str,
        case_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        con.execute(
            "INSERT INTO audit_log (at, actor, action, case_id, detail) VALUES (?, ?, ?, ?, ?)",
            (_now(), actor, action, case_id, json.dumps(detail or {}, sort_keys=True)),
        )

    def log_event(
        self, actor: str, action: str, *, case_id: str | None = None, **detail: Any
    ) -> None:
        """Append one event (e.g. ``login``, ``export``) to the audit log."""
        with self._write() as con:
            self._audit(con, actor, action, case_id, detail)

    def audit_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit events, newest first."""
        sql = "SELECT event_id, at, actor, action, case_id, detail FROM audit_log ORDER BY event_id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        with self._read() as con:
            rows = con.execute(sql, params).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    # -- reviewers ---------------------------------------------------------------
    def insert_reviewer(
        self,
        username: str,
        *,
        display_name: str,
        auth: str,
        password_hash: str | None,
        actor: str = "cli",
    ) -> None:
        """Add an account (use :func:`clinfuse.review.auth.add_reviewer`, which hashes).

        Raises:
            ConfigError: the username is taken.
        """
        try:
            with self._write() as con:
                con.execute(
                    "INSERT INTO reviewers (username, display_name, auth, password_hash, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (username, display_name, auth, password_hash, _now()),
                )
                self._audit(
                    con, actor, "reviewer_added", detail={"username": username, "auth": auth}
                )
        except sqlite3.IntegrityError as e:
            raise ConfigError(
                f"reviewer {username!r} already exists",
                path=self.path,
                hint="choose another username, or change the password with --reset-password",
            ) from e

    def set_password_hash(self, username: str, password_hash: str, *, actor: str) -> None:
        """Replace an account's password hash (audited).

        Raises:
            ConfigError: no such password account.
        """
        with self._write() as con:
            cur = con.execute(
                "UPDATE reviewers SET password_hash = ? WHERE username = ? AND auth = 'password'",
                (password_hash, username),
            )
            if cur.rowcount != 1:
                raise ConfigError(f"no password account named {username!r}", path=self.path)
            self._audit(con, actor, "password_changed", detail={"username": username})

    def set_active(self, username: str, active: bool, *, actor: str) -> None:
        """Deactivate an account (it can no longer log in or save decisions; its past
        decisions stay) or reactivate it (audited).

        Raises:
            ConfigError: no such account.
        """
        with self._write() as con:
            cur = con.execute(
                "UPDATE reviewers SET active = ? WHERE username = ?", (int(active), username)
            )
            if cur.rowcount != 1:
                raise ConfigError(f"no reviewer account named {username!r}", path=self.path)
            event = "reviewer_reactivated" if active else "reviewer_deactivated"
            self._audit(con, actor, event, detail={"username": username})

    def copy_reviewers(self, source: str | Path, *, actor: str = "cli") -> dict[str, list[str]]:
        """Copy another review database's accounts into this one (audited), for a new
        database — a scored cohort's — whose reviewers already have accounts on the run's.

        Each account keeps its display name, sign-in kind, password hash (the password
        itself is never known) and active state: a deactivated reviewer stays deactivated.
        An account whose username exists here already is left as it is.

        Returns:
            ``{"copied": [...], "kept": [...]}``: usernames copied, and those already here.

        Raises:
            ConfigError: ``source`` is missing, is this database, or is not a clinfuse
                review database.
        """
        source = Path(source).expanduser()
        if not source.is_file():
            raise ConfigError(
                "no review database there to copy reviewers from",
                path=source,
                hint="give the run's database, e.g. RUN.reviews.sqlite beside the run folder",
            )
        if source.resolve() == self.path.resolve():
            raise ConfigError("cannot copy a review database's reviewers into itself", path=source)
        rows = read_reviewers(source)
        copied: list[str] = []
        kept: list[str] = []
        with self._write() as con:
            here = {r[0] for r in con.execute("SELECT username FROM reviewers").fetchall()}
            for row in rows:
                if row["username"] in here:
                    kept.append(row["username"])
                    continue
                con.execute(
                    "INSERT INTO reviewers (username, display_name, auth, password_hash, active,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        row["username"],
                        row["display_name"],
                        row["auth"],
                        row["password_hash"],
                        int(row["active"]),
                        _now(),
                    ),
                )
                self._audit(
                    con,
                    actor,
                    "reviewer_copied",
                    detail={
                        "username": row["username"],
                        "auth": row["auth"],
                        "active": bool(row["active"]),
                        "source": str(source.resolve()),
                    },
                )
                copied.append(row["username"])
        return {"copied": copied, "kept": kept}

    def reviewer(self, username: str) -> dict[str, Any] | None:
        """The account row of ``username`` (None when unknown)."""
        with self._read() as con:
            row = con.execute(
                "SELECT username, display_name, auth, password_hash, active, created_at "
                "FROM reviewers WHERE username = ?",
                (username,),
            ).fetchone()
        return None if row is None else dict(row)

    def reviewers(self) -> list[dict[str, Any]]:
        """All accounts, without password hashes."""
        with self._read() as con:
            rows = con.execute(
                "SELECT username, display_name, auth, active, created_at FROM reviewers "
                "ORDER BY username"
            ).fetchall()
        return [dict(r) for r in rows]

    def ensure_oidc_reviewer(self, username: str, display_name: str) -> None:
        """Register an OIDC identity (by e-mail) on its first login; no-op afterwards.

        Raises:
            ConfigError: the e-mail is the name of a local (password) account — single
                sign-on never logs in as one — or of a deactivated account.
        """
        with self._write() as con:
            row = con.execute(
                "SELECT auth, active FROM reviewers WHERE username = ?", (username,)
            ).fetchone()
            if row is not None and row["auth"] != "oidc":
                raise ConfigError(
                    f"{username!r} is a local account of this review database; single sign-on "
                    "cannot log in as it",
                    hint="log in with that account's password, or rename the local account",
                )
            if row is not None and not row["active"]:
                raise ConfigError(
                    f"the account {username!r} is deactivated",
                    hint="ask the study coordinator to reactivate it",
                )
            if row is None:
                con.execute(
                    "INSERT INTO reviewers (username, display_name, auth, password_hash, created_at)"
                    " VALUES (?, ?, 'oidc', NULL, ?)",
                    (username, display_name, _now()),
                )
                self._audit(con, username, "reviewer_added", detail={"auth": "oidc"})

    # -- reviews -----------------------------------------------------------------
    def add_review(
        self,
        *,
        case_id: str,
        reviewer: str,
        decision: str,
        risk_shown: float,
        threshold: float,
        model_version: str,
        comment: str = "",
        corrected_label: int | None = None,
        risk_low: float | None = None,
        risk_high: float | None = None,
        run_path: str | None = None,
    ) -> Review:
        """Append a decision; an earlier one by the same reviewer is kept and superseded.

        Raises:
            ConfigError: unknown reviewer or decision, a label other than 0/1,
                a risk outside [0, 1], or an over-long comment.
        """
        if decision not in DECISIONS:
            raise ConfigError(
                f"decision must be one of {DECISIONS}, got {decision!r}", field="decision"
            )
        if corrected_label not in (None, 0, 1):
            raise ConfigError(
                f"corrected label must be 0, 1 or empty, got {corrected_label!r}",
                field="corrected_label",
            )
        for name, value in (("risk_shown", risk_shown), ("threshold", threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be within [0, 1], got {value!r}", field=name)
        comment = str(comment or "")
        if len(comment) > MAX_COMMENT_CHARS:
            raise ConfigError(
                f"comment has {len(comment)} characters; at most {MAX_COMMENT_CHARS}",
                field="comment",
            )
        with self._write() as con:
            account = con.execute(
                "SELECT active FROM reviewers WHERE username = ?", (reviewer,)
            ).fetchone()
            if account is None:
                raise ConfigError(
                    f"unknown reviewer {reviewer!r}", field="reviewer", path=self.path
                )
            if not account["active"]:
                raise ConfigError(
                    f"the account {reviewer!r} is deactivated; its decisions are no longer "
                    "accepted",
                    field="reviewer",
                    path=self.path,
                )
            prev = con.execute(
                "SELECT MAX(review_id) FROM reviews WHERE case_id = ? AND reviewer = ?",
                (case_id, reviewer),
            ).fetchone()[0]
            cur = con.execute(
                "INSERT INTO reviews (case_id, reviewer, decision, corrected_label, comment, "
                "risk_shown, risk_low, risk_high, threshold, model_version, run_path, created_at, "
                "supersedes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    case_id,
                    reviewer,
                    decision,
                    corrected_label,
                    comment,
                    float(risk_shown),
                    None if risk_low is None else float(risk_low),
                    None if risk_high is None else float(risk_high),
                    float(threshold),
                    model_version,
                    run_path,
                    _now(),
                    prev,
                ),
            )
            review_id = int(cur.lastrowid or 0)
            self._audit(
                con,
                reviewer,
                "review_saved",
                case_id,
                {"review_id": review_id, "decision": decision, "supersedes": prev},
            )
            row = con.execute(
                f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE review_id = ?", (review_id,)
            ).fetchone()
        return Review(**dict(row))

    def reviews(
        self,
        *,
        case_id: str | None = None,
        reviewer: str | None = None,
        latest_only: bool = False,
    ) -> list[Review]:
        """Saved reviews in order of saving (filtered by case and/or reviewer).

        Args:
            latest_only: keep only each reviewer's newest review per case.
        """
        where, params = [], []
        if case_id is not None:
            where.append("case_id = ?")
            params.append(case_id)
        if reviewer is not None:
            where.append("reviewer = ?")
            params.append(reviewer)
        if latest_only:
            where.append(
                "review_id IN (SELECT MAX(review_id) FROM reviews GROUP BY case_id, reviewer)"
            )
        sql = f"SELECT {_REVIEW_COLUMNS} FROM reviews"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY review_id"
        with self._read() as con:
            rows = con.execute(sql, params).fetchall()
        return [Review(**dict(r)) for r in rows]

    def review_status(self, case_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per case: number of reviewers, latest decision per reviewer, time of the last review."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.reviews(latest_only=True):
            s = out.setdefault(r.case_id, {"n_reviewers": 0, "decisions": {}, "last": r.created_at})
            s["n_reviewers"] += 1
            s["decisions"][r.reviewer] = r.decision
            s["last"] = max(s["last"], r.created_at)
        if case_ids is not None:
            keep = set(case_ids)
            out = {k: v for k, v in out.items() if k in keep}
        return out

    def export_rows(self) -> list[dict[str, Any]]:
        """Every review (the full history) as dicts, for CSV export."""
        return [r.as_dict() for r in self.reviews()]


def read_reviewers(source: Path) -> list[sqlite3.Row]:
    """Another review database's accounts, read without writing to it (read-only).

    Raises:
        ConfigError: not a clinfuse review database, or one of a newer clinfuse.
    """
    not_ours = ConfigError(
        "the file is not a clinfuse review store",
        path=source,
        hint="give a database the review app wrote (e.g. RUN.reviews.sqlite)",
    )
    try:
        con = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as e:
        raise ConfigError(f"cannot open the review database: {e}", path=source) from e
    try:
        con.row_factory = sqlite3.Row
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the review database has schema version {version}; this clinfuse knows up to "
                f"{SCHEMA_VERSION}",
                path=source,
                hint="upgrade clinfuse",
            )
        if version < 1:
            raise not_ours
        return con.execute(
            "SELECT username, display_name, auth, password_hash, active FROM reviewers "
            "ORDER BY username"
        ).fetchall()
    except sqlite3.DatabaseError as e:  # not SQLite at all, or no reviewers table
        raise not_ours from e
    finally:
        con.close()


def _split_sql(script: str) -> list[str]:
    """Statements of a schema script (triggers hold ``;`` inside BEGIN … END)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        inside_trigger = text.upper().startswith("CREATE TRIGGER") and not text.upper().endswith(
            "END;"
        )
        if text.endswith(";") and not inside_trigger:
            out.append(text)
            buf = []
    if "".join(buf).strip():
        out.append("\n".join(buf))
    return out
