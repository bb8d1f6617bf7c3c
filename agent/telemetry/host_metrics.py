"""Host and process resource readings (psutil, cgroup memory limit) for metrics and /health."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from opentelemetry.metrics import Observation

from agent.telemetry.catalogue import GaugeSource, Instruments
from agent.telemetry.logs import get_logger

_MB = 1024 * 1024
# cgroup v1 writes a page-rounded 2**63 for "no limit".
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Sample:
    """One reading; ratios in 0..1, sizes in bytes."""

    cpu_utilization: float
    memory_utilization: float
    filesystem_utilization: float
    mountpoint: str
    network_transmit: int
    network_receive: int
    process_count: int
    rss: int
    vms: int
    memory_limit: int | None
    host_memory_total: int
    host_memory_available: int
    process_cpu_utilization: float

    @property
    def process_memory_utilization(self) -> float:
        """RSS over the cgroup limit, or over host memory without a limit."""
        return self.rss / (self.memory_limit or self.host_memory_total or 1)

    @property
    def latest(self) -> dict[str, float | None]:
        """The /health metrics block: rss_mb, vms_mb, percent, available_mb, limit_mb, cpu, disk."""
        total = self.memory_limit or self.host_memory_total
        available = (
            max(0, self.memory_limit - self.rss)
            if self.memory_limit
            else self.host_memory_available
        )
        return {
            "rss_mb": round(self.rss / _MB, 1),
            "vms_mb": round(self.vms / _MB, 1),
            "percent": round(100.0 * self.rss / (total or 1), 2),
            "available_mb": round(available / _MB, 1),
            "limit_mb": round(self.memory_limit / _MB, 1) if self.memory_limit else None,
            "cpu": round(100.0 * self.cpu_utilization, 2),
            "disk": round(100.0 * self.filesystem_utilization, 2),
        }


def cgroup_memory_limit(
    root: str | os.PathLike[str] = "/sys/fs/cgroup",
    self_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
) -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes).

    None when there is no cgroup or no real limit ("max", or v1's near-2**63 sentinel).
    """
    base = Path(root)
    v2_path, v1_path = _own_cgroup_paths(Path(self_cgroup))
    candidates: list[Path] = []
    if v2_path is not None:
        candidates.append(base / v2_path.lstrip("/") / "memory.max")
    candidates.append(base / "memory.max")
    if v1_path is not None:
        candidates.append(base / "memory" / v1_path.lstrip("/") / "memory.limit_in_bytes")
    candidates.append(base / "memory" / "memory.limit_in_bytes")
    for candidate in candidates:
        try:
            raw = candidate.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            value = int(raw)
        except ValueError:
            continue
        return value if 0 < value < _UNLIMITED else None
    return None


def _own_cgroup_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """The v2 (unified) and v1 memory-controller paths from /proc/self/cgroup."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    v2: str | None = None
    v1: str | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def mountpoint_of(path: str) -> str:
    """The mount point of the filesystem holding path."""
    current = Path(os.path.realpath(path))
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return str(current)


class ResourceSampler:
    """Samples psutil and the cgroup every `interval` seconds; gauges read the cached sample."""

    def __init__(
        self,
        instruments: Instruments,
        data_dir: str,
        interval: float,
        *,
        cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
        self_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
    ) -> None:
        self._instruments = instruments
        self._data_dir = data_dir
        self._interval = interval
        self._cgroup_root = cgroup_root
        self._self_cgroup = self_cgroup
        self._process = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._sample: Sample | None = None
        self._log = get_logger("performance")
        # cpu_percent(None) measures since the previous call; this call starts the first window.
        psutil.cpu_percent(None)
        self._process.cpu_percent(None)
        self._sources: dict[str, GaugeSource] = {
            name: self._source(read) for name, read in _READINGS.items()
        }
        for name, source in self._sources.items():
            instruments.publish(name, source)

    @property
    def latest(self) -> dict[str, float | None] | None:
        """The last sample's /health block, or None before the first sample."""
        sample = self._sample
        return sample.latest if sample is not None else None

    @property
    def sample(self) -> Sample | None:
        """The last sample."""
        return self._sample

    def sample_once(self) -> Sample:
        """Reads every value now (blocking: psutil and /sys), caches and returns it."""
        data_dir = self._data_dir if os.path.exists(self._data_dir) else "."
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(data_dir)
        network = psutil.net_io_counters()
        info = self._process.memory_info()
        sample = Sample(
            cpu_utilization=psutil.cpu_percent(None) / 100.0,
            memory_utilization=memory.percent / 100.0,
            filesystem_utilization=disk.percent / 100.0,
            mountpoint=mountpoint_of(data_dir),
            network_transmit=int(network.bytes_sent) if network else 0,
            network_receive=int(network.bytes_recv) if network else 0,
            process_count=len(psutil.pids()),
            rss=int(info.rss),
            vms=int(info.vms),
            memory_limit=_real_limit(
                cgroup_memory_limit(self._cgroup_root, self._self_cgroup), int(memory.total)
            ),
            host_memory_total=int(memory.total),
            host_memory_available=int(memory.available),
            # Over a very short window the 10 ms CPU-time tick can overshoot; clamp to 0..1.
            process_cpu_utilization=min(
                1.0, self._process.cpu_percent(None) / (100.0 * self._cpus)
            ),
        )
        self._sample = sample
        return sample

    async def run(self) -> None:
        """Samples until cancelled; a failed reading is logged and the loop goes on."""
        while True:
            try:
                await asyncio.to_thread(self.sample_once)
            except (OSError, psutil.Error) as exc:
                self._log.warning("resource sample failed", error=str(exc))
            await asyncio.sleep(self._interval)

    def close(self) -> None:
        """Stops publishing to the instruments."""
        for name, source in self._sources.items():
            self._instruments.unpublish(name, source)

    def _source(self, read: Callable[[Sample], list[Observation]]) -> GaugeSource:
        """A gauge source reading the cached sample (nothing before the first one)."""
        return lambda: read(self._sample) if self._sample is not None else []


def _one(value: float, attributes: dict[str, str] | None = None) -> list[Observation]:
    return [Observation(value, attributes)]


# What each instrument of the catalogue reads from a sample.
_READINGS: dict[str, Callable[[Sample], list[Observation]]] = {
    "system.cpu.utilization": lambda s: _one(s.cpu_utilization),
    "system.memory.utilization": lambda s: _one(s.memory_utilization),
    "system.filesystem.utilization": lambda s: _one(
        s.filesystem_utilization, {"system.filesystem.mountpoint": s.mountpoint}
    ),
    "system.network.io": lambda s: [
        Observation(s.network_transmit, {"network.io.direction": "transmit"}),
        Observation(s.network_receive, {"network.io.direction": "receive"}),
    ],
    "system.process.count": lambda s: _one(s.process_count),
    "process.memory.usage": lambda s: _one(s.rss),
    "process.memory.utilization": lambda s: _one(s.process_memory_utilization),
    "process.cpu.utilization": lambda s: _one(s.process_cpu_utilization),
}


def _real_limit(limit: int | None, host_total: int) -> int | None:
    """A cgroup limit at or above host memory limits nothing."""
    return limit if limit is not None and limit < host_total else None
