"""Kernel identity, duration/gap statistics, the persistent profile store and its listing."""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import threading
from pathlib import Path

import numpy as np
import pytest

from scheduler.kernel_id import kernel_id, module_digest
from scheduler.profiles import (
    SCHEMA_VERSION,
    Distribution,
    ProfileStore,
    default_profile_path,
    read_profiles,
)
from scheduler.profiles_cli import main

PTX = b".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry saxpy() { ret; }\n"
DIGEST = module_digest(PTX)


# kernel identity


def test_module_digest_ignores_trailing_nul_bytes() -> None:
    assert module_digest(PTX + b"\0") == DIGEST
    assert module_digest(PTX + b"\0\0\0") == DIGEST
    assert module_digest(bytearray(PTX)) == DIGEST
    assert module_digest(PTX.replace(b"saxpy", b"axpby")) != DIGEST
    assert len(DIGEST) == 64


def test_kernel_id_is_stable_and_short() -> None:
    first = kernel_id(DIGEST, "saxpy", (128, 1, 1), (256, 1, 1), 0)
    assert first == kernel_id(module_digest(PTX + b"\0"), "saxpy", (128, 1, 1), (256, 1, 1), 0)
    assert len(first) == 16
    int(first, 16)


@pytest.mark.parametrize(
    ("digest", "name", "grid", "block", "smem"),
    [
        (module_digest(PTX + b"// other\n"), "saxpy", (128, 1, 1), (256, 1, 1), 0),
        (DIGEST, "saxpy2", (128, 1, 1), (256, 1, 1), 0),
        (DIGEST, "saxpy", (129, 1, 1), (256, 1, 1), 0),
        (DIGEST, "saxpy", (1, 128, 1), (256, 1, 1), 0),
        (DIGEST, "saxpy", (128, 1, 1), (128, 2, 1), 0),
        (DIGEST, "saxpy", (128, 1, 1), (256, 1, 1), 1024),
        (DIGEST, "saxpy", (12, 8, 1), (256, 1, 1), 0),
    ],
)
def test_kernel_id_changes_with_each_input(
    digest: str, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int
) -> None:
    base = kernel_id(DIGEST, "saxpy", (128, 1, 1), (256, 1, 1), 0)
    assert kernel_id(digest, name, grid, block, smem) != base


def test_kernel_id_refuses_wrong_dimensions() -> None:
    with pytest.raises(ValueError):
        kernel_id(DIGEST, "saxpy", (128, 1), (256, 1, 1), 0)  # type: ignore[arg-type]


# distributions


def test_distribution_statistics_match_numpy() -> None:
    rng = random.Random(7)
    samples = [rng.uniform(5.0, 500.0) for _ in range(101)]
    dist = Distribution()
    for value in samples:
        dist.add(value)
    assert dist.count == 101
    assert dist.mean == pytest.approx(statistics.fmean(samples))
    assert dist.max == max(samples)
    assert dist.p50 == pytest.approx(statistics.median(samples))
    assert dist.p50 == pytest.approx(np.percentile(samples, 50))
    assert dist.p95 == pytest.approx(np.percentile(samples, 95))
    assert dist.percentile(25) == pytest.approx(np.percentile(samples, 25))


def test_distribution_small_and_empty() -> None:
    dist = Distribution()
    assert (dist.count, dist.mean, dist.p50, dist.p95, dist.max) == (0, None, None, None, None)
    for value in (10.0, 20.0, 30.0, 40.0):
        dist.add(value)
    assert dist.p50 == 25.0
    assert dist.p95 == pytest.approx(np.percentile([10, 20, 30, 40], 95))
    with pytest.raises(ValueError):
        dist.add(-1.0)
    with pytest.raises(ValueError):
        dist.add(float("nan"))
    with pytest.raises(ValueError):
        dist.percentile(101)
    assert dist.count == 4


def test_distribution_percentiles_cover_the_recent_window_only() -> None:
    dist = Distribution(window=8)
    old = [1000.0] * 20
    new = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    for value in old + new:
        dist.add(value)
    assert dist.count == 28
    assert dist.mean == pytest.approx(statistics.fmean(old + new))
    assert dist.max == 1000.0
    assert dist.recent == tuple(new)
    assert dist.p50 == pytest.approx(np.percentile(new, 50))
    assert dist.p95 == pytest.approx(np.percentile(new, 95))


def test_distribution_round_trips_through_json() -> None:
    dist = Distribution(window=4)
    for value in (5.0, 1.0, 9.0, 3.0, 7.0, 2.0):
        dist.add(value)
    again = Distribution.from_dict(json.loads(json.dumps(dist.to_dict())))
    assert (again.window, again.count, again.mean, again.max, again.recent) == (
        dist.window,
        dist.count,
        dist.mean,
        dist.max,
        dist.recent,
    )
    assert (again.p50, again.p95) == (dist.p50, dist.p95)
    narrower = Distribution.from_dict(dist.to_dict(), window=2)
    assert narrower.recent == (7.0, 2.0)
    assert narrower.count == 6


def test_distribution_rejects_inconsistent_data() -> None:
    with pytest.raises(ValueError):
        Distribution.from_dict(
            {"window": 4, "count": 1, "total": 3.0, "max": 2.0, "recent": [1, 2]}
        )


# the two stages


def test_measurement_stage_then_every_nth_launch(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "p.sqlite3", measure_count=10, sample_every=16) as store:
        measured = []
        for launch in range(1, 10 + 16 * 3 + 1):
            assert store.needs_measurement("k") == (launch <= 10)
            if store.should_measure("k"):
                measured.append(launch)
                store.record_duration("k", "kern", 50.0)
        assert measured == [*range(1, 11), 26, 42, 58]
        assert not store.needs_measurement("k")
        assert store.needs_measurement("other")


def test_measurement_stage_lasts_until_enough_samples_arrive(tmp_path: Path) -> None:
    """Durations come back after completion: launches before that are all measured."""
    with ProfileStore(tmp_path / "p.sqlite3", measure_count=3, sample_every=4) as store:
        assert all(store.should_measure("k") for _ in range(20))
        for _ in range(3):
            store.record_duration("k", "kern", 10.0)
        assert [store.should_measure("k") for _ in range(8)] == [False, False, False, True] * 2


def test_a_run_of_launches_measures_each_new_kernel_but_samples_a_known_one_once(
    tmp_path: Path,
) -> None:
    with ProfileStore(tmp_path / "p.sqlite3", measure_count=1, sample_every=2) as store:
        store.record_duration("k", "kern", 10.0)
        plans = store.launch_plans(["k", "new", "k", "k", "new", "k", "k"])
        assert [measured for measured, _ in plans] == [False, True, True, False, True, False, False]
        assert [predicted for _, predicted in plans[:2]] == [None, None]  # min_samples: 3
        assert store.launch_plans(["k"]) == [(True, None)], "the skipped sample comes next"


def test_sharing_stage_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    with ProfileStore(path, measure_count=2, sample_every=3) as store:
        store.record_duration("k", "kern", 10.0)
        store.record_duration("k", "kern", 12.0)
    with ProfileStore(path, measure_count=2, sample_every=3) as store:
        assert not store.needs_measurement("k")
        assert [store.should_measure("k") for _ in range(6)] == [False, False, True] * 2


def test_predicted_duration_needs_min_samples(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "p.sqlite3", min_samples=3) as store:
        assert store.predicted_duration_us("k") is None
        store.record_duration("k", "kern", 30.0)
        store.record_duration("k", "kern", 10.0)
        assert store.predicted_duration_us("k") is None
        store.record_duration("k", "kern", 20.0)
        assert store.predicted_duration_us("k") == 20.0


def test_gaps_are_recorded_and_negative_gaps_count_as_zero(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "p.sqlite3") as store:
        store.record_gap("k", 100.0)
        store.record_gap("k", -5.0)
        profile = store.get("k")
        assert profile is not None
        assert profile.gap_after.recent == (100.0, 0.0)
        assert profile.duration.count == 0
        assert profile.name == ""
        store.record_duration("k", "kern", 7.0)
        assert store.get("k").name == "kern"  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            store.record_duration("k", "kern", float("inf"))
        with pytest.raises(ValueError):
            store.record_gap("k", float("nan"))
        assert store.get("missing") is None


def test_get_returns_a_snapshot(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "p.sqlite3") as store:
        store.record_duration("k", "kern", 1.0)
        snapshot = store.get("k")
        assert snapshot is not None
        store.record_duration("k", "kern", 2.0)
        assert snapshot.duration.count == 1
        assert store.get("k").duration.count == 2  # type: ignore[union-attr]


# persistence


def test_profiles_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "profiles.sqlite3"
    rng = random.Random(3)
    durations = [rng.uniform(10.0, 90.0) for _ in range(40)]
    gaps = [rng.uniform(100.0, 900.0) for _ in range(15)]
    with ProfileStore(path, window=16) as store:
        for value in durations:
            store.record_duration("aaaa", "vector_add", value)
        for value in gaps:
            store.record_gap("aaaa", value)
        store.record_duration("bbbb", "saxpy", 5.0)
        assert store.flush() == 2
        assert store.flush() == 0
        store.record_duration("bbbb", "saxpy", 6.0)
        before = {p.kernel_id: p for p in store.all_profiles()}
    assert path.exists()

    with ProfileStore(path, window=16) as store:
        after = {p.kernel_id: p for p in store.all_profiles()}
        assert sorted(after) == ["aaaa", "bbbb"]
        for kid, old in before.items():
            new = after[kid]
            assert new.name == old.name
            for a, b in ((old.duration, new.duration), (old.gap_after, new.gap_after)):
                assert (b.count, b.mean, b.max, b.recent, b.p50, b.p95) == (
                    a.count,
                    a.mean,
                    a.max,
                    a.recent,
                    a.p50,
                    a.p95,
                )
        dist = after["aaaa"].duration
        assert dist.count == 40
        assert dist.p50 == pytest.approx(np.percentile(durations[-16:], 50))
        assert dist.p95 == pytest.approx(np.percentile(durations[-16:], 95))
        assert after["bbbb"].duration.recent == (5.0, 6.0)
        assert store.predicted_duration_us("aaaa") == dist.p50

    assert [p.kernel_id for p in read_profiles(path)] == ["aaaa", "bbbb"]


def test_records_after_reopen_add_to_stored_profiles(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    with ProfileStore(path) as store:
        store.record_duration("k", "kern", 1.0)
    with ProfileStore(path) as store:
        store.record_duration("k", "kern", 3.0)
    with ProfileStore(path) as store:
        profile = store.get("k")
        assert profile is not None
        assert (profile.duration.count, profile.duration.mean) == (2, 2.0)


def test_close_is_idempotent_and_flush_after_close_fails(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    store.close()
    store.close()
    with pytest.raises(RuntimeError):
        store.flush()


def test_schema_version_is_recorded_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    ProfileStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        ProfileStore(path)


def test_unreadable_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    with ProfileStore(path) as store:
        store.record_duration("good", "kern", 1.0)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO kernel_profiles VALUES ('bad', 'x', 'not json', '{}')")
    conn.close()
    with ProfileStore(path) as store:
        assert [p.kernel_id for p in store.all_profiles()] == ["good"]


def test_threads_recording_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    threads_n, per_thread = 8, 500
    with ProfileStore(path) as store:
        start = threading.Barrier(threads_n + 1)

        def work(index: int) -> None:
            start.wait()
            for i in range(per_thread):
                kid = f"k{i % 4}"
                store.should_measure(kid)
                store.record_duration(kid, f"kern{i % 4}", float(index + 1))
                store.record_gap(kid, float(i))
                store.predicted_duration_us(kid)

        def flusher() -> None:
            start.wait()
            for _ in range(20):
                store.flush()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
        threads.append(threading.Thread(target=flusher))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = threads_n * per_thread
        assert sum(p.duration.count for p in store.all_profiles()) == total
        assert sum(p.gap_after.count for p in store.all_profiles()) == total
    reopened = read_profiles(path)
    assert [p.duration.count for p in reopened] == [total // 4] * 4
    assert sum(p.duration.mean * p.duration.count for p in reopened) == pytest.approx(
        per_thread * sum(range(1, threads_n + 1))
    )


# default path


def test_default_path_honours_fikit_profile_db(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FIKIT_PROFILE_DB", str(tmp_path / "x.db"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_profile_path() == tmp_path / "x.db"
    with ProfileStore() as store:
        assert store.path == tmp_path / "x.db"
    assert (tmp_path / "x.db").exists()


def test_default_path_uses_xdg_cache_home_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FIKIT_PROFILE_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_profile_path() == tmp_path / "cache" / "fikit" / "profiles.sqlite3"
    with ProfileStore():
        pass
    assert (tmp_path / "cache" / "fikit" / "profiles.sqlite3").exists()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_profile_path() == tmp_path / "home" / ".cache" / "fikit" / "profiles.sqlite3"


# fikit-profiles


LONG_NAME = "_ZN7cutlass6KernelINS_4gemm6kernel4GemmINS1_11threadblock12MmaPipelinedE"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "profiles.sqlite3"
    with ProfileStore(path) as store:
        for value in (10.0, 20.0, 30.0, 40.0):
            store.record_duration("1111111111111111", "saxpy", value)
        for value in (100.0, 300.0):
            store.record_gap("1111111111111111", value)
        for value in (500.0, 700.0):
            store.record_duration("2222222222222222", LONG_NAME, value)
        store.record_gap("3333333333333333", 5.0)
    return path


def test_cli_prints_a_table(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["KERNEL", "ID", "NAME", "COUNT"]
    assert [line.split()[0] for line in lines[1:]] == [
        "1111111111111111",
        "2222222222222222",
        "3333333333333333",
    ]
    assert lines[1].split()[1:] == ["saxpy", "4", "25.0", "25.0", "38.5", "40.0", "200.0", "290.0"]
    assert LONG_NAME not in lines[2]
    assert LONG_NAME[:30] in lines[2]
    assert "..." in lines[2]
    assert lines[3].split()[1:] == ["?", "0", "-", "-", "-", "-", "5.0", "5.0"]


def test_cli_sorts_and_limits(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--db", str(db), "--sort", "mean", "--limit", "2"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["2222222222222222", "1111111111111111"]
    main(["--db", str(db), "--sort", "name"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [
        "3333333333333333",
        "2222222222222222",
        "1111111111111111",
    ]
    with pytest.raises(SystemExit):
        main(["--db", str(db), "--limit", "0"])


def test_cli_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(db), "--json", "--sort", "p95"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["db"] == str(db)
    first, second, third = data["profiles"]
    assert first["kernel_id"] == "2222222222222222"
    assert first["name"] == LONG_NAME
    assert first["duration_us"] == {
        "count": 2,
        "mean": 600.0,
        "p50": 600.0,
        "p95": pytest.approx(690.0),
        "max": 700.0,
    }
    assert second["gap_after_us"]["p50"] == 200.0
    assert third["duration_us"]["mean"] is None


def test_cli_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere" / "profiles.sqlite3"
    assert main(["--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == f"no profiles recorded yet at {path}\n"
    assert not path.exists()
    assert not path.parent.exists()
    assert main(["--db", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"db": str(path), "profiles": []}
    assert captured.err == f"no profiles recorded yet at {path}\n"


def test_cli_uses_the_default_path(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FIKIT_PROFILE_DB", str(db))
    main(["--json"])
    assert len(json.loads(capsys.readouterr().out)["profiles"]) == 3


def test_cli_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SystemExit, match="cannot read"):
        main(["--db", str(path)])
