"""Usable CPUs: the affinity mask and the cgroup v2 quota, whichever allows fewer."""

from __future__ import annotations

import os
from pathlib import Path

from fleet import cpus


def test_affinity_is_this_process_mask():
    assert cpus.affinity() == sorted(os.sched_getaffinity(0))


def make_cgroup(root: Path, quotas: dict[str, str]) -> None:
    for path, quota in quotas.items():
        (root / path).mkdir(parents=True, exist_ok=True)
        (root / path / "cpu.max").write_text(quota + "\n")


def test_quota_is_the_tightest_on_the_path_to_the_root(tmp_path):
    make_cgroup(tmp_path, {"a": "150000 100000", "a/b": "max 100000", "a/b/c": "300000 100000"})
    assert cpus.cgroup_quota("/a/b/c", root=tmp_path) == 1.5


def test_no_quota_anywhere_is_none(tmp_path):
    make_cgroup(tmp_path, {"x": "max 100000"})
    assert cpus.cgroup_quota("/x", root=tmp_path) is None
    assert cpus.cgroup_quota("/missing/entirely", root=tmp_path) is None


def test_usable_count_on_this_machine_is_within_affinity():
    assert 1 <= cpus.usable_count() <= len(os.sched_getaffinity(0))


def test_instances_map_to_cpus_then_run_unpinned():
    assert cpus.cpu_for_instance("1", [2, 5]) == 2
    assert cpus.cpu_for_instance("2", [2, 5]) == 5
    assert cpus.cpu_for_instance("3", [2, 5]) is None
    assert cpus.cpu_for_instance("0", [2, 5]) is None
    assert cpus.cpu_for_instance("web", [2, 5]) is None
