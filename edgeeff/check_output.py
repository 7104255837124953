"""Gate outputs besides the screen: a JUnit XML report and rows in the results database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from edgeeff.io import atomic_path

JUNIT_SUITE = "edgeeff check"
ACCURACY_TABLE = "accuracy_checks"
BUSY_TIMEOUT_S = 30.0


def _case_name(check: dict) -> str:
    """Name a threshold test case with its limit, e.g. "top-1 drop vs float <= 0.5 points"."""
    limit = check.get("limit")
    if limit is None:
        return check["name"]
    if check["name"] in ("top-1 drop vs float", "drop vs baseline"):
        return f"{check['name']} <= {limit:g} points"
    return f"{check['name']} >= {limit:g}"


def junit_xml(report: dict) -> bytes:
    """Render the report as JUnit XML: one test case per model and threshold, failures with their message."""
    checks = report["checks"]
    failures = sum(1 for c in checks if not c["passed"] and c["name"] != "runs")
    errors = sum(1 for c in checks if not c["passed"] and c["name"] == "runs")
    skipped = sum(1 for c in checks if c.get("skipped"))
    seconds = f"{report.get('seconds', 0.0):.3f}"
    root = ET.Element("testsuites", name=JUNIT_SUITE, tests=str(len(checks)), failures=str(failures),
                      errors=str(errors), skipped=str(skipped), time=seconds)
    suite = ET.SubElement(root, "testsuite", name=f"{JUNIT_SUITE}: {report['data']['path']}", tests=str(len(checks)),
                          failures=str(failures), errors=str(errors), skipped=str(skipped), time=seconds,
                          timestamp=report["created"])
    properties = ET.SubElement(suite, "properties")
    for name, value in [("mode", report["mode"]), ("images", report["data"]["images"]),
                        ("float_top1", report["float"].get("top1")), *report["tool_versions"].items()]:
        ET.SubElement(properties, "property", name=str(name), value="" if value is None else str(value))

    seconds_by_model = {a["name"]: a["seconds"] for a in report["artifacts"]}
    seconds_by_model["float"] = report["float"]["seconds"]
    for check in checks:
        # Dots in a classname read as package separators in CI viewers, so the artifact's suffix
        # dot is replaced.
        case = ET.SubElement(suite, "testcase", classname=check["model"].replace(".", "_"), name=_case_name(check),
                             time=f"{seconds_by_model.get(check['model'], 0.0):.3f}")
        if check.get("skipped"):
            ET.SubElement(case, "skipped", message=check["message"])
        elif not check["passed"]:
            kind = "error" if check["name"] == "runs" else "failure"
            element = ET.SubElement(case, kind, message=check["message"], type="threshold" if kind == "failure" else "runtime")
            element.text = check["message"]
        else:
            ET.SubElement(case, "system-out").text = check["message"]

    ET.SubElement(suite, "system-out").text = json.dumps(
        {"worst_classes": report["worst_classes"], "worst_images": report["worst_images"][:5],
         "warnings": report["warnings"]}, indent=2, default=str)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def write_junit(report: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(junit_xml(report))


def default_results_db() -> Path | None:
    """Return the profile results database path, or None when this install has no results database."""
    try:
        from edgeeff.profile.database import default_db_path
    except ImportError:
        return None
    return default_db_path()


class AccuracyResults:
    """Gate results stored beside latency measurements, in their own table of the results database.

    One row per model (float and each artifact) and run, keyed by artifact sha256 and data
    fingerprint, with the full model entry as JSON. SQLite in WAL mode with a busy timeout, as
    the latency table uses, so concurrent CI jobs can write.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"CREATE TABLE IF NOT EXISTS {ACCURACY_TABLE} ("
                               "id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, "
                               "model TEXT NOT NULL, artifact_sha256 TEXT, runtime TEXT, precision TEXT, "
                               "data_path TEXT, data_fingerprint TEXT NOT NULL, images INTEGER, labelled INTEGER, "
                               "top1 REAL, top5 REAL, drop_points REAL, agreement REAL, mean_cosine REAL, "
                               "passed INTEGER NOT NULL, record TEXT NOT NULL)")
            connection.execute(f"CREATE INDEX IF NOT EXISTS {ACCURACY_TABLE}_key "
                               f"ON {ACCURACY_TABLE} (artifact_sha256, data_fingerprint)")
            yield connection
            connection.commit()
        except sqlite3.DatabaseError as exc:
            raise OSError(f"results database {self.path} failed: {exc}; pass --db with another file or --no-db") from exc
        finally:
            connection.close()

    def add_report(self, report: dict) -> int:
        """Store one row per model of a gate report; return the number of rows written."""
        failed_models = {c["model"] for c in report["checks"] if not c["passed"]}
        rows = []
        for model in [report["float"], *report["artifacts"]]:
            rows.append((report["created"], model["name"], model.get("sha256") or model.get("checkpoint_sha256"),
                         model["runtime"], model.get("precision"), report["data"]["path"],
                         report["data"]["fingerprint"], model["images"], int(report["labelled"]), model.get("top1"),
                         model.get("top5"), model.get("drop_points"), model.get("agreement"),
                         model.get("mean_cosine"), int(model["name"] not in failed_models),
                         json.dumps(model, default=str)))
        with self._connect() as connection:
            connection.executemany(
                f"INSERT INTO {ACCURACY_TABLE} (created_at, model, artifact_sha256, runtime, precision, data_path, "
                "data_fingerprint, images, labelled, top1, top5, drop_points, agreement, mean_cosine, passed, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def query(self, model: str | None = None, limit: int | None = None) -> list[dict]:
        """Return stored rows, newest first, optionally for one model name."""
        sql = f"SELECT * FROM {ACCURACY_TABLE}"
        params: list = []
        if model:
            sql += " WHERE model = ?"
            params.append(model)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._connect() as connection:
            return [dict(row) for row in connection.execute(sql, params).fetchall()]
