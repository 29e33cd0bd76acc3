"""What the box spends, sampled once per telemetry interval: CPU (total and per core), load, memory, the agent's RSS,
free disk of the data directory, temperatures, network I/O, and on Jetson GPU load and power from sysfs. psutil is
imported on first use (it is in the `agent` extra); without it the fields psutil would fill are left out."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from pathlib import Path

from protocol import Resources

log = logging.getLogger(__name__)

JETSON_GPU_LOAD = ("/sys/devices/gpu.0/load", "/sys/devices/platform/gpu.0/load", "/sys/devices/17000000.ga10b/load")
JETSON_POWER_GLOBS = (
    "/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power0_input",  # JetPack 4: mW, VDD_IN
    "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in1_input",  # JetPack 5+: mV of VDD_IN (with curr1_input in mA)
)


def _read_number(path: str) -> float | None:
    try:
        return float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


class ResourceSampler:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._psutil = None
        self._process = None
        self._net: tuple[int, int] | None = None
        self._tried = False

    def _load(self):
        if not self._tried:
            self._tried = True
            try:
                import psutil

                self._psutil = psutil
                self._process = psutil.Process()
                psutil.cpu_percent(percpu=True)  # the first call only sets the reference point
            except ImportError:
                log.info("psutil is not installed: telemetry reports no CPU, memory or temperatures")
        return self._psutil

    def sample(self) -> Resources:
        res = Resources()
        psutil = self._load()
        with contextlib.suppress(OSError):
            res.load1 = round(os.getloadavg()[0], 3)
        if psutil is not None:
            per_core = psutil.cpu_percent(percpu=True)
            res.cpu_per_core = [round(c, 1) for c in per_core]
            res.cpu_percent = round(sum(per_core) / len(per_core), 1) if per_core else None
            mem = psutil.virtual_memory()
            res.mem_percent = round(mem.percent, 1)
            res.mem_used_mb = round((mem.total - mem.available) / 2**20, 1)
            if self._process is not None:
                res.rss_mb = round(self._process.memory_info().rss / 2**20, 1)
            net = psutil.net_io_counters()
            if net is not None:
                if self._net is not None:
                    res.net_rx_bytes = max(0, net.bytes_recv - self._net[0])
                    res.net_tx_bytes = max(0, net.bytes_sent - self._net[1])
                self._net = (net.bytes_recv, net.bytes_sent)
        try:
            import shutil

            res.disk_free_mb = round(shutil.disk_usage(self.data_dir).free / 2**20, 1)
        except OSError:
            pass
        temps = self._temperatures(psutil)
        if temps:
            res.temperatures = temps
            res.temperature_c = max(temps.values())
        self._jetson(res)
        return res

    def _temperatures(self, psutil) -> dict[str, float]:
        temps: dict[str, float] = {}
        reader = getattr(psutil, "sensors_temperatures", None) if psutil else None
        if reader is not None:
            try:
                for chip, entries in reader().items():
                    for i, entry in enumerate(entries[:8]):
                        if entry.current is not None and len(temps) < 16:
                            temps[f"{chip}/{entry.label or i}"] = round(entry.current, 1)
            except Exception:  # some drivers raise on read
                pass
        if not temps:
            for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*"))[:16]:
                milli = _read_number(f"{zone}/temp")
                if milli is not None:
                    kind = Path(f"{zone}/type")
                    name = kind.read_text().strip() if kind.exists() else Path(zone).name
                    temps[name] = round(milli / 1000, 1)
        return temps

    def _jetson(self, res: Resources) -> None:
        for path in JETSON_GPU_LOAD:
            load = _read_number(path)
            if load is not None:
                res.gpu_load_percent = load / 10  # per mille
                break
        for pattern in JETSON_POWER_GLOBS:
            for path in sorted(glob.glob(pattern))[:1]:
                value = _read_number(path)
                if value is None:
                    continue
                if path.endswith("in_power0_input"):
                    res.gpu_power_w = value / 1000
                else:
                    current = _read_number(path.replace("in1_input", "curr1_input"))
                    if current is not None:
                        res.gpu_power_w = value * current / 1e6
                return
