"""Kernel profiles: measured durations and the idle gaps after them, kept in SQLite.

As in the FIKIT paper, a kernel ID (``scheduler.kernel_id``) goes through two stages:

- the **measurement stage**: every launch of a new kernel ID is measured until it has
  ``measure_count`` duration samples;
- the **sharing stage**: only every ``sample_every``-th launch is measured, which keeps the
  profile fresh online at low cost.

``ProfileStore`` keeps all profiles in memory (recording is a dictionary update under a lock)
and writes the changed ones to its database on ``flush()``. One server should own a database
at a time: profiles are read when the store opens and written back whole.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_WINDOW = 256


def default_profile_path() -> Path:
    """The database path: ``$FIKIT_PROFILE_DB``, else ``fikit/profiles.sqlite3`` in the cache.

    The cache directory is ``$XDG_CACHE_HOME`` when set, else ``~/.cache``.
    """
    if explicit := os.environ.get("FIKIT_PROFILE_DB"):
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache else Path.home() / ".cache"
    return base / "fikit" / "profiles.sqlite3"


def _checked_sample(value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"a sample must be finite and >= 0, got {value}")
    return value


class Distribution:
    """An online summary of samples in microseconds.

    ``count``, ``mean`` and ``max`` cover every sample ever added; the percentiles cover only
    the most recent ``window`` samples, so that they follow a kernel whose duration drifts.
    Percentiles interpolate linearly between samples (numpy's default method). Every
    statistic is None while there are no samples.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._recent: deque[float] = deque(maxlen=window)
        self._count = 0
        self._total = 0.0
        self._max: float | None = None
        self._sorted: list[float] | None = None

    @property
    def window(self) -> int:
        """How many recent samples the percentiles are over."""
        return self._recent.maxlen or 0

    def add(self, value: float) -> None:
        """Add one sample; it must be finite and not negative."""
        value = _checked_sample(value)
        self._recent.append(value)
        self._count += 1
        self._total += value
        self._max = value if self._max is None else max(self._max, value)
        self._sorted = None

    @property
    def count(self) -> int:
        """Number of samples ever added."""
        return self._count

    @property
    def mean(self) -> float | None:
        """Mean of all samples."""
        return self._total / self._count if self._count else None

    @property
    def max(self) -> float | None:
        """Largest sample ever added."""
        return self._max

    @property
    def p50(self) -> float | None:
        """Median of the recent window."""
        return self.percentile(50.0)

    @property
    def p95(self) -> float | None:
        """95th percentile of the recent window."""
        return self.percentile(95.0)

    @property
    def recent(self) -> tuple[float, ...]:
        """The samples in the window, oldest first."""
        return tuple(self._recent)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100) of the recent window."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be within 0..100, got {q}")
        if not self._recent:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._recent)
        ordered = self._sorted
        position = q / 100.0 * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    def copy(self) -> Distribution:
        """An independent copy."""
        twin = Distribution(self.window)
        twin._recent.extend(self._recent)
        twin._count, twin._total, twin._max = self._count, self._total, self._max
        return twin

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible form, window samples included."""
        return {
            "window": self.window,
            "count": self._count,
            "total": self._total,
            "max": self._max,
            "recent": list(self._recent),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], window: int | None = None) -> Distribution:
        """Rebuild from ``to_dict()``; ``window`` overrides the stored one (keeping the newest)."""
        dist = cls(int(data["window"]) if window is None else window)
        recent = [float(v) for v in data["recent"]]
        count = int(data["count"])
        if count < len(recent) or any(not math.isfinite(v) or v < 0.0 for v in recent):
            raise ValueError("inconsistent distribution data")
        dist._recent.extend(recent)
        dist._count = count
        dist._total = float(data["total"])
        dist._max = None if data["max"] is None else float(data["max"])
        return dist

    def __repr__(self) -> str:
        return f"Distribution(count={self.count}, mean={self.mean}, p50={self.p50})"


@dataclass
class KernelProfile:
    """What is known about one kernel ID.

    ``duration`` is the kernel's time on the GPU. ``gap_after`` is the idle time its task
    leaves after it: from this kernel's completion until the task's next launch arrives.
    """

    kernel_id: str
    name: str
    duration: Distribution
    gap_after: Distribution

    def copy(self) -> KernelProfile:
        """An independent copy."""
        return KernelProfile(self.kernel_id, self.name, self.duration.copy(), self.gap_after.copy())


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS kernel_profiles (
        kernel_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        duration TEXT NOT NULL,
        gap_after TEXT NOT NULL
    )""",
)


class ProfileStore:
    """Kernel profiles in memory, persisted to a SQLite database.

    Thread-safe. The database (and its directory) is created on first use; every stored
    profile is read when the store opens. ``record_duration``, ``record_gap`` and the
    queries touch memory only; ``flush()`` (also run by ``close()``) writes the profiles
    changed since the last flush in one transaction.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        min_samples: int = 3,
        measure_count: int = 10,
        sample_every: int = 16,
    ) -> None:
        if min(window, min_samples, measure_count, sample_every) < 1:
            raise ValueError("window, min_samples, measure_count and sample_every must be >= 1")
        self.path = Path(path) if path is not None else default_profile_path()
        self.window = window
        self.min_samples = min_samples
        self.measure_count = measure_count
        self.sample_every = sample_every
        #: Guards the in-memory state below.
        self._lock = threading.Lock()
        self._profiles: dict[str, KernelProfile] = {}
        self._dirty: set[str] = set()
        self._shared_launches: dict[str, int] = {}
        #: (predicted duration, still in the measurement stage) of each kernel ID, computed
        #: since its last duration sample: a launch's plan is one lookup.
        self._plans: dict[str, tuple[float | None, bool]] = {}
        #: Guards the connection; flush writes under it alone, so recording never waits on disk.
        self._db_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, check_same_thread=False, timeout=10.0
        )
        try:
            self._open_schema()
            self._load()
        except BaseException:
            self._conn.close()
            raise

    def _open_schema(self) -> None:
        assert self._conn is not None
        with self._conn:
            for statement in _SCHEMA:
                self._conn.execute(statement)
            version = _schema_version(self._conn, self.path)
            if version is None:
                self._conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def _load(self) -> None:
        assert self._conn is not None
        for profile in _read_profiles(self._conn, self.path, self.window):
            self._profiles[profile.kernel_id] = profile

    def _profile(self, kernel_id: str, name: str) -> KernelProfile:
        """The live profile of ``kernel_id``, created when new; call with the lock held."""
        profile = self._profiles.get(kernel_id)
        if profile is None:
            profile = KernelProfile(
                kernel_id, name, Distribution(self.window), Distribution(self.window)
            )
            self._profiles[kernel_id] = profile
        return profile

    def record_duration(self, kernel_id: str, name: str, us: float) -> None:
        """Add one measured GPU duration of ``kernel_id`` (named ``name``)."""
        us = _checked_sample(us)
        with self._lock:
            profile = self._profile(kernel_id, name)
            profile.duration.add(us)
            self._plans.pop(kernel_id, None)
            if name:
                profile.name = name
            self._dirty.add(kernel_id)

    def record_gap(self, kernel_id: str, us: float) -> None:
        """Add one idle gap after ``kernel_id``; a negative gap (next launch early) counts as 0."""
        us = float(us)
        if math.isfinite(us):
            us = max(us, 0.0)
        us = _checked_sample(us)
        with self._lock:
            self._profile(kernel_id, "").gap_after.add(us)
            self._dirty.add(kernel_id)

    def get(self, kernel_id: str) -> KernelProfile | None:
        """A snapshot of the profile of ``kernel_id``, or None when it was never recorded."""
        with self._lock:
            profile = self._profiles.get(kernel_id)
            return None if profile is None else profile.copy()

    def all_profiles(self) -> list[KernelProfile]:
        """Snapshots of every profile, ordered by kernel ID."""
        with self._lock:
            return [self._profiles[kid].copy() for kid in sorted(self._profiles)]

    def predicted_duration_us(self, kernel_id: str) -> float | None:
        """Median duration over the recent window; None with fewer than ``min_samples``."""
        with self._lock:
            return self._plan(kernel_id)[0]

    def launch_plan(self, kernel_id: str) -> tuple[bool, float | None]:
        """For one launch: ``(should_measure, predicted_duration_us)`` (``launch_plans``)."""
        return self.launch_plans((kernel_id,))[0]

    def launch_plans(self, kernel_ids: Iterable[str]) -> list[tuple[bool, float | None]]:
        """For a run of launches, in order: ``(should_measure, predicted_duration_us)`` of
        each, under one lock. Every launch in the measurement stage is measured; in the
        sharing stage every ``sample_every``-th (counted per kernel ID in this process),
        at most one per kernel ID in a run: a measured launch goes to the GPU on its own,
        and a burst of one kernel would otherwise be cut into pieces. On every launch's
        path: dictionaries only."""
        plans = []
        sampled: set[str] = set()
        with self._lock:
            cached, shared, every = self._plans, self._shared_launches, self.sample_every
            for kernel_id in kernel_ids:
                predicted, measuring = cached.get(kernel_id) or self._plan(kernel_id)
                if not measuring:
                    launches = shared.get(kernel_id, 0) + 1
                    measuring = launches >= every and kernel_id not in sampled
                    if measuring:
                        sampled.add(kernel_id)
                        launches = 0
                    shared[kernel_id] = launches
                plans.append((measuring, predicted))
        return plans

    def _plan(self, kernel_id: str) -> tuple[float | None, bool]:
        """(predicted duration, in the measurement stage) of ``kernel_id``, cached until its
        next sample (call with the lock held)."""
        plan = self._plans.get(kernel_id)
        if plan is None:
            profile = self._profiles.get(kernel_id)
            count = 0 if profile is None else profile.duration.count
            predicted = profile.duration.p50 if profile and count >= self.min_samples else None
            plan = self._plans[kernel_id] = (predicted, count < self.measure_count)
        return plan

    def needs_measurement(self, kernel_id: str) -> bool:
        """Whether ``kernel_id`` is still in the measurement stage (< ``measure_count`` samples)."""
        with self._lock:
            return self._plan(kernel_id)[1]

    def should_measure(self, kernel_id: str) -> bool:
        """Whether to measure this launch of ``kernel_id``; call exactly once per launch
        (``launch_plan``'s first half)."""
        return self.launch_plan(kernel_id)[0]

    def flush(self) -> int:
        """Write the profiles changed since the last flush in one transaction; returns how many."""
        with self._db_lock:
            if self._conn is None:
                raise RuntimeError("the profile store is closed")
            return self._write_dirty(self._conn)

    def close(self) -> None:
        """Flush and close the database; closing again does nothing."""
        with self._db_lock:
            if self._conn is None:
                return
            try:
                self._write_dirty(self._conn)
            finally:
                self._conn.close()
                self._conn = None

    def _write_dirty(self, conn: sqlite3.Connection) -> int:
        """Write the dirty profiles; call with the database lock held."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            profiles = [self._profiles[kid] for kid in dirty]
            snapshots = [
                (p.kernel_id, p.name, p.duration.to_dict(), p.gap_after.to_dict()) for p in profiles
            ]
        rows = [
            (kid, name, json.dumps(duration), json.dumps(gap_after))
            for kid, name, duration, gap_after in snapshots
        ]
        if not rows:
            return 0
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO kernel_profiles (kernel_id, name, duration, gap_after) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (kernel_id) DO UPDATE SET "
                    "name = excluded.name, duration = excluded.duration, "
                    "gap_after = excluded.gap_after",
                    rows,
                )
        except BaseException:
            with self._lock:
                self._dirty |= dirty
            raise
        return len(rows)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_profiles(path: Path | str) -> list[KernelProfile]:
    """The profiles stored at ``path``, read without writing (for tools beside a server)."""
    path = Path(path)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not {"schema_version", "kernel_profiles"} <= tables:
            return []
        _schema_version(conn, path)
        return sorted(_read_profiles(conn, path, None), key=lambda p: p.kernel_id)
    finally:
        conn.close()


def _schema_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The database's schema version (None when unset); refuses one this code cannot read."""
    version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    if version is not None and version != SCHEMA_VERSION:
        raise RuntimeError(
            f"profile database {path} has schema version {version}; "
            f"this FIKIT reads version {SCHEMA_VERSION}"
        )
    return version


def _read_profiles(conn: sqlite3.Connection, path: Path, window: int | None) -> list[KernelProfile]:
    """Every readable stored profile; unreadable rows are logged and skipped."""
    profiles = []
    rows = conn.execute("SELECT kernel_id, name, duration, gap_after FROM kernel_profiles")
    for kid, name, duration, gap_after in rows:
        try:
            profiles.append(
                KernelProfile(
                    kid,
                    name,
                    Distribution.from_dict(json.loads(duration), window),
                    Distribution.from_dict(json.loads(gap_after), window),
                )
            )
        except (ValueError, KeyError, TypeError) as err:
            log.warning("skipping unreadable profile %s in %s: %s", kid, path, err)
    return profiles
