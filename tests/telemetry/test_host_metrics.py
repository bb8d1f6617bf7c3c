"""psutil and cgroup readings, published to the catalogue's observable instruments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil

from agent.telemetry.host_metrics import ResourceSampler, cgroup_memory_limit
from tests.support.telemetry import metric_points, telemetry_for_tests

_LIMIT = 512 * 1024 * 1024


def _cgroup_v2(tmp_path: Path, value: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "kubepods" / "pod1" / "memory.max").write_text(value + "\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/kubepods/pod1\n")
    return root, self_cgroup


def _cgroup_v1(tmp_path: Path, value: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / "memory" / "docker" / "abc").mkdir(parents=True)
    (root / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(value + "\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("12:pids:/docker/abc\n4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n")
    return root, self_cgroup


def test_cgroup_v2_memory_max_is_the_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup_v2(tmp_path, str(_LIMIT))) == _LIMIT


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup_v2(tmp_path, "max")) is None


def test_cgroup_v1_limit_in_bytes_is_the_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup_v1(tmp_path, str(_LIMIT))) == _LIMIT


def test_cgroup_v1_unlimited_sentinel_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup_v1(tmp_path, "9223372036854771712")) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path / "none", tmp_path / "missing") is None


def test_process_memory_utilization_is_rss_over_the_cgroup_limit(tmp_path: Path) -> None:
    telemetry, _spans, _reader, _logs = telemetry_for_tests()
    root, self_cgroup = _cgroup_v2(tmp_path, str(_LIMIT))
    sampler = ResourceSampler(
        telemetry.instruments, str(tmp_path), 1.0, cgroup_root=root, self_cgroup=self_cgroup
    )
    sample = sampler.sample_once()
    telemetry.shutdown(2.0)
    assert sample.memory_limit == _LIMIT
    assert sample.process_memory_utilization == sample.rss / _LIMIT
    latest = sampler.latest
    assert latest is not None
    assert latest["limit_mb"] == 512.0
    assert latest["available_mb"] == round((_LIMIT - sample.rss) / 1024 / 1024, 1)


def test_without_a_limit_utilization_is_over_host_memory(tmp_path: Path) -> None:
    telemetry, _spans, _reader, _logs = telemetry_for_tests()
    root, self_cgroup = _cgroup_v2(tmp_path, "max")
    sampler = ResourceSampler(
        telemetry.instruments, str(tmp_path), 1.0, cgroup_root=root, self_cgroup=self_cgroup
    )
    sample = sampler.sample_once()
    telemetry.shutdown(2.0)
    assert sample.memory_limit is None
    assert sample.process_memory_utilization == sample.rss / psutil.virtual_memory().total
    assert sampler.latest is not None
    assert sampler.latest["limit_mb"] is None


def test_sampled_values_are_published_to_the_instruments(tmp_path: Path) -> None:
    telemetry, _spans, reader, _logs = telemetry_for_tests()
    sampler = ResourceSampler(telemetry.instruments, str(tmp_path), 1.0)
    sample = sampler.sample_once()
    data = reader.get_metrics_data()
    telemetry.shutdown(2.0)
    (rss,) = metric_points(data, "process.memory.usage")
    assert rss.value == sample.rss > 0
    (disk,) = metric_points(data, "system.filesystem.utilization")
    assert 0.0 < disk.value <= 1.0
    assert disk.attributes["system.filesystem.mountpoint"] == sample.mountpoint
    network = {
        p.attributes["network.io.direction"]: p.value
        for p in metric_points(data, "system.network.io")
    }
    assert set(network) == {"transmit", "receive"}
    for name in ("system.cpu.utilization", "system.memory.utilization", "process.cpu.utilization"):
        (point,) = metric_points(data, name)
        assert 0.0 <= point.value <= 1.0
    (processes,) = metric_points(data, "system.process.count")
    assert processes.value >= 1


def test_nothing_is_published_before_the_first_sample(tmp_path: Path) -> None:
    telemetry, _spans, reader, _logs = telemetry_for_tests()
    ResourceSampler(telemetry.instruments, str(tmp_path), 1.0)
    data = reader.get_metrics_data()
    telemetry.shutdown(2.0)
    assert metric_points(data, "process.memory.usage") == []


async def test_run_samples_in_the_background_until_cancelled(tmp_path: Path) -> None:
    telemetry, _spans, _reader, _logs = telemetry_for_tests()
    sampler = ResourceSampler(telemetry.instruments, str(tmp_path), 0.05)
    task = asyncio.create_task(sampler.run())
    try:
        async with asyncio.timeout(5):
            while sampler.latest is None:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        telemetry.shutdown(2.0)
    assert sampler.latest is not None
    assert sampler.latest["rss_mb"] > 0
