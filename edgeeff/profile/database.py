"""The results database: every measurement, keyed by device fingerprint and artifact sha256.

SQLite in WAL mode with a busy timeout, so several `edgeeff profile` processes (or CI jobs on one
machine) can write at once. Each row keeps the full JSON record; the columns beside it exist for
filtering. Connections are opened per call, so a database object can be shared across threads.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from edgeeff.profile.record import Measurement

SCHEMA_VERSION = 1
DB_ENV = "EDGEEFF_RESULTS_DB"
BUSY_TIMEOUT_S = 30.0

# Columns copied from the record for filtering; the record itself is the `record` column.
COLUMNS = {
    "created_at": "TEXT NOT NULL",
    "device_fingerprint": "TEXT NOT NULL",
    "artifact_sha256": "TEXT NOT NULL",
    "device_name": "TEXT",
    "device_kind": "TEXT",
    "artifact_name": "TEXT",
    "artifact_format": "TEXT",
    "runtime": "TEXT",
    "runtime_version": "TEXT",
    "method": "TEXT",
    "threads": "INTEGER",
    "warmup": "INTEGER",
    "runs": "INTEGER",
    "target_rse": "REAL",
    "variant": "TEXT",
    "phi": "REAL",
    "resolution": "INTEGER",
    "precision": "TEXT",
    "status": "TEXT NOT NULL",
    "median_ms": "REAL",
    "p90_ms": "REAL",
    "p99_ms": "REAL",
    "peak_rss_mb": "REAL",
}

CSV_FIELDS = ("id", "created_at", "device_name", "device_kind", "device_fingerprint", "artifact_name", "artifact_sha256",
              "artifact_format", "artifact_bytes", "runtime", "runtime_version", "method", "variant", "phi",
              "resolution", "precision", "threads", "warmup", "runs", "target_rse", "stop_reason", "status", "error",
              "load_ms", "first_ms", "min_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms",
              "std_ms", "rse", "peak_rss_mb", "cpu_model", "cores")


class ResultsDatabaseError(RuntimeError):
    """The results database cannot be opened, read or written."""


def default_db_path() -> Path:
    """Return $EDGEEFF_RESULTS_DB, else results.sqlite in the user's data directory."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("edgeeff", appauthor=False)) / "results.sqlite"


class ResultsDatabase:
    """Measurements stored in one SQLite file."""

    def __init__(self, path: str | Path | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser() if path else default_db_path()
        self.busy_timeout_s = busy_timeout_s
        self._initialized = False

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.path.is_dir():
            raise ResultsDatabaseError(f"results database path is a directory: {self.path}; pass --db with a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsDatabaseError(f"cannot create the folder of results database {self.path} ({exc.strerror}); "
                                       "pass --db with a writable path") from exc
        connection = None
        try:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
            connection.row_factory = sqlite3.Row
            if not self._initialized:
                self._initialize(connection)
            yield connection
            connection.commit()
        except sqlite3.DatabaseError as exc:
            raise self._explain(exc) from exc
        finally:
            if connection is not None:
                connection.close()

    def _explain(self, exc: sqlite3.DatabaseError) -> ResultsDatabaseError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return ResultsDatabaseError(f"results database {self.path} is locked by another process and stayed locked "
                                        f"for {self.busy_timeout_s:.0f} s; retry when it finishes, or pass --db with "
                                        "another file")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return ResultsDatabaseError(f"results database {self.path} is corrupt ({text}); move it aside and rerun, "
                                        "or pass --db with another file")
        if "unable to open" in text or "readonly" in text or "read-only" in text:
            return ResultsDatabaseError(f"cannot write results database {self.path} ({text}); pass --db with a "
                                        "writable path")
        return ResultsDatabaseError(f"results database {self.path} failed: {text}")

    def _initialize(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ResultsDatabaseError(f"results database {self.path} has schema {version}, newer than this edgeeff "
                                       f"reads ({SCHEMA_VERSION}); upgrade edgeeff or pass --db with another file")
        if version == SCHEMA_VERSION:
            # Already set up. Skipping the writes below lets a reader work while another process writes.
            self._initialized = True
            return
        # WAL lets readers and one writer work at once; several writers wait up to the busy timeout.
        connection.execute("PRAGMA journal_mode=WAL")
        columns = ",\n".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        connection.execute(f"CREATE TABLE IF NOT EXISTS measurements (\n"
                           f"id INTEGER PRIMARY KEY AUTOINCREMENT,\n{columns},\nrecord TEXT NOT NULL)")
        connection.execute("CREATE INDEX IF NOT EXISTS measurements_key "
                           "ON measurements (device_fingerprint, artifact_sha256)")
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        connection.commit()
        self._initialized = True

    def add(self, record: Measurement) -> int:
        """Store one measurement; return its row id."""
        data = record.to_dict()
        names = list(COLUMNS)
        values = [data.get(name) for name in names] + [json.dumps(data)]
        placeholders = ", ".join("?" for _ in values)
        with self._connect() as connection:
            cursor = connection.execute(
                f"INSERT INTO measurements ({', '.join(names)}, record) VALUES ({placeholders})", values)
            return int(cursor.lastrowid)

    def query(self, *, device: str | None = None, fingerprint: str | None = None, artifact: str | None = None,
              sha256: str | None = None, artifact_format: str | None = None, runtime: str | None = None,
              variant: str | None = None, precision: str | None = None, threads: int | None = None,
              status: str | None = None, limit: int | None = None) -> list[tuple[int, Measurement]]:
        """Return (id, measurement) pairs, newest first, that match every filter given.

        `device` matches the device name or a fingerprint prefix; `artifact` matches part of the
        artifact name or a sha256 prefix.
        """
        clauses, params = [], []
        if device:
            clauses.append("(device_name = ? OR device_fingerprint LIKE ?)")
            params += [device, f"{device}%"]
        if fingerprint:
            clauses.append("device_fingerprint = ?")
            params.append(fingerprint)
        if artifact:
            clauses.append("(artifact_name LIKE ? OR artifact_sha256 LIKE ?)")
            params += [f"%{artifact}%", f"{artifact.lower()}%"]
        if sha256:
            clauses.append("artifact_sha256 = ?")
            params.append(sha256)
        for column, value in (("artifact_format", artifact_format), ("runtime", runtime), ("variant", variant),
                              ("precision", precision), ("threads", threads), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT id, record FROM measurements"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._connect() as connection:
            rows = connection.execute(sql, params).fetchall()
        return [(row["id"], Measurement.from_dict(json.loads(row["record"]))) for row in rows]

    def latest(self, fingerprint: str, sha256: str, threads: int | None = None,
               runtime_version: str | None = None) -> Measurement | None:
        """Return the newest successful measurement of an artifact on a device with these settings."""
        for _, record in self.query(fingerprint=fingerprint, sha256=sha256, status="ok"):
            if threads is not None and record.threads != threads:
                continue
            if runtime_version is not None and record.runtime_version != runtime_version:
                continue
            return record
        return None


def to_csv(rows: list[tuple[int, Measurement]]) -> str:
    """Return measurements as CSV, one row each, with the columns in CSV_FIELDS."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row_id, record in rows:
        data = record.to_dict()
        data["id"] = row_id
        data["cpu_model"] = record.device_info.get("cpu_model")
        data["cores"] = record.device_info.get("cores")
        writer.writerow(data)
    return buffer.getvalue()
