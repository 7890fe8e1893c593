"""The table of connection counts an app's workers share (fleet/siblings.py), with the clock set by hand."""

from __future__ import annotations

from pathlib import Path

from fleet.siblings import RESCAN, SLOTS, STALE, Siblings


def test_a_worker_sees_its_live_siblings_counts_not_its_own(tmp_path: Path) -> None:
    one, two, three = (Siblings.open(str(tmp_path), str(n)) for n in (1, 2, 3))
    assert one.lightest(100.0) is None, "no sibling has written yet"
    one.publish(30, 100.0)
    two.publish(20, 100.0)
    three.publish(24, 100.0)
    assert one.lightest(100.5) == 20
    assert two.lightest(100.5) == 24
    assert three.lightest(100.5) == 20


def test_a_silent_or_stopped_siblings_slot_does_not_count(tmp_path: Path) -> None:
    one, two, three = (Siblings.open(str(tmp_path), str(n)) for n in (1, 2, 3))
    two.publish(0, 100.0)
    three.publish(5, 100.0 + STALE)
    assert one.lightest(100.0 + STALE) == 5, "a slot not written for STALE is a stuck worker's"
    three.leave()
    assert one.lightest(100.0 + STALE) is None, "a worker that stopped leaves the table at once"


def test_without_a_state_directory_or_a_numbered_instance_nothing_is_shared(tmp_path: Path) -> None:
    for siblings in (Siblings.open("", "1"), Siblings.open(str(tmp_path), "web"),
                     Siblings.open(str(tmp_path), str(SLOTS))):
        siblings.publish(10, 1.0)
        assert siblings.lightest(1.0) is None
    assert list(tmp_path.iterdir()) == []


def test_a_directory_it_cannot_write_shares_nothing(tmp_path: Path, caplog) -> None:
    missing = tmp_path / "not-there"
    siblings = Siblings.open(str(missing), "1")
    assert siblings.lightest(1.0) is None
    assert "not sharing connection counts" in caplog.text and str(missing) in caplog.text


def test_a_slot_from_before_a_reboot_does_not_count(tmp_path: Path) -> None:
    one, two = (Siblings.open(str(tmp_path), str(n)) for n in (1, 2))
    two.publish(3, 5000.0)  # NOTE: CLOCK_MONOTONIC starts again at a reboot; the file stays
    assert one.lightest(12.0) is None


def test_a_new_sibling_is_seen_within_a_rescan(tmp_path: Path) -> None:
    one = Siblings.open(str(tmp_path), "1")
    assert one.lightest(100.0) is None
    two = Siblings.open(str(tmp_path), "2")
    two.publish(5, 100.1)
    assert one.lightest(100.2) is None, "between scans only the slots in use then are read"
    assert one.lightest(100.0 + RESCAN) == 5
    two.publish(2, 100.0 + RESCAN)
    assert one.lightest(100.1 + RESCAN) == 2, "a slot in use is read every time"


def test_a_sibling_with_a_thread_free_is_not_busy(tmp_path: Path) -> None:
    one, two, three = (Siblings.open(str(tmp_path), str(n)) for n in (1, 2, 3))
    assert one.all_busy(100.0), "no sibling: none has a thread free"
    two.publish(10, 100.0)
    three.publish(10, 100.0)
    assert not one.all_busy(100.5)
    two.publish_busy(True, 0)
    assert not one.all_busy(100.5), "three has a thread free"
    three.publish_busy(True, 0)
    assert one.all_busy(100.5)
    three.publish(12, 101.0)
    assert one.all_busy(101.0) and one.lightest(101.0) == 10, "a count written keeps the busy field"
    two.publish_busy(False, 0)
    assert not one.all_busy(101.0)


def test_a_sibling_tells_the_requests_it_serves_at_once_while_busy(tmp_path: Path) -> None:
    one, two, three = (Siblings.open(str(tmp_path), str(n)) for n in (1, 2, 3))
    two.publish(1, 100.0)
    three.publish(1, 100.0)
    two.served_one(7)
    assert one.served(100.0) == 0, "with a thread free, a worker's count waits for its gate to close"
    two.publish_busy(True, 8)
    three.publish_busy(True, 2)
    assert one.served(100.0) == 10
    two.served_one(9)
    assert one.served(100.0) == 11, "while busy, each request is told as it ends"


def test_a_new_worker_clears_its_predecessors_slot_at_once(tmp_path: Path) -> None:
    import time

    one = Siblings.open(str(tmp_path), "1")
    killed = Siblings.open(str(tmp_path), "2")
    killed.publish(25, time.monotonic())
    killed.publish_busy(True, 100)
    assert (one.lightest(time.monotonic()), one.all_busy(time.monotonic())) == (25, True)
    Siblings.open(str(tmp_path), "2")  # NOTE: its replacement, before it accepts anything
    assert (one.lightest(time.monotonic()), one.all_busy(time.monotonic())) == (0, False), \
        "the killed worker's clients and busy flag are not its replacement's"
