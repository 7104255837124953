"""Latency profiling of exported artifacts on this host, on a device agent, or on Android over adb.

No torch anywhere in this package: the device agent imports it with only the runtimes installed
(`pip install edgeeff[agent]`).

    from edgeeff.profile import Artifact, ProfileSettings, ResultsDatabase, open_device
    device = open_device("host")                      # or "pi5", "agent://127.0.0.1:8765", "adb:SERIAL"
    record = device.profile(Artifact.open("b0.tflite"), ProfileSettings(threads=2, runs=50))
    ResultsDatabase().add(record)
"""

from __future__ import annotations

from typing import Callable, Iterable

from edgeeff.profile.database import ResultsDatabase, ResultsDatabaseError, default_db_path, to_csv
from edgeeff.profile.devices import DeviceProfile, available_profiles, load_profile, open_device, resolve_profile
from edgeeff.profile.fingerprint import host_info
from edgeeff.profile.record import (Artifact, DeviceError, Measurement, ProfileError, ProfileSettings,
                                    parse_target_rse)


def profile_artifacts(paths: Iterable[str], device="host", settings: ProfileSettings | None = None,
                      database: ResultsDatabase | None = None,
                      on_event: Callable[[str, dict], None] | None = None, **device_options) -> list[Measurement]:
    """Profile each artifact on one device, store every record in `database` (when given), return them.

    `device` is a spec string, a DeviceProfile or an opened device. A failure of one artifact
    is recorded with status "failed" and the rest go on; a device that cannot be reached raises
    DeviceError. `on_event(artifact_name, event)` receives progress events.
    """
    settings = settings or ProfileSettings()
    if isinstance(device, (str, DeviceProfile)):
        device = open_device(device, **device_options)
    artifacts = [Artifact.open(path) for path in paths]
    device.info()
    records = []
    for artifact in artifacts:
        callback = (lambda event, name=artifact.name: on_event(name, event)) if on_event else None
        record = device.profile(artifact, settings, callback)
        if database is not None:
            database.add(record)
        records.append(record)
    return records


__all__ = ["Artifact", "DeviceError", "DeviceProfile", "Measurement", "ProfileError", "ProfileSettings",
           "ResultsDatabase", "ResultsDatabaseError", "available_profiles", "default_db_path", "host_info",
           "load_profile", "open_device", "parse_target_rse", "profile_artifacts", "resolve_profile", "to_csv"]
