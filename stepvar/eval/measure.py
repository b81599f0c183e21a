"""What bench and compare need around a timed run: peak memory, and a description of the machine.

Peak memory means different things on the two devices, and the reports say which:
    cuda_max_allocated   torch.cuda.max_memory_allocated() after resetting the peak before the
                         run: everything torch holds on the GPU, weights included (the number
                         papers quote); reserved (allocator cache) is reported beside it.
    cpu_rss_peak_delta   the process's peak resident set (VmHWM, reset before the run through
                         /proc/self/clear_refs) minus the resident set just before the run: what
                         the generation added on top of the loaded model. Freed heap is returned
                         to the OS first (malloc_trim) so earlier runs do not hide later growth.
    cpu_rss_sampled_delta the same from a 2 ms sampling thread, where /proc cannot reset the peak
                         (may miss short spikes).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .. import __version__


@dataclass
class MemoryPeak:
    bytes: int  # the headline number; what it is depends on kind
    kind: str  # cuda_max_allocated | cpu_rss_peak_delta | cpu_rss_sampled_delta
    reserved_bytes: int | None = None  # CUDA allocator reserve
    rss_peak_bytes: int | None = None  # CPU: absolute peak RSS of the process


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # "reset the peak resident set size" (Linux >= 4.0)
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Sampler(threading.Thread):
    def __init__(self, interval_s: float = 0.002):
        super().__init__(daemon=True)
        self.interval_s, self.peak, self.stop = interval_s, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _status_kb("VmRSS") or 0)
            time.sleep(self.interval_s)


@contextmanager
def peak_memory(device: torch.device):
    """`with peak_memory(dev) as box: run()` then box[0] is a MemoryPeak for that run."""
    box: list[MemoryPeak] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        torch.cuda.synchronize(device)
        box.append(MemoryPeak(int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated",
                              reserved_bytes=int(torch.cuda.max_memory_reserved(device))))
        return
    _trim_heap()
    before = _status_kb("VmRSS") or 0
    if _reset_hwm() and _status_kb("VmHWM") is not None:
        yield box
        peak = _status_kb("VmHWM") or before
        box.append(MemoryPeak(max(0, peak - before), "cpu_rss_peak_delta", rss_peak_bytes=peak))
        return
    sampler = _Sampler()
    sampler.start()
    try:
        yield box
    finally:
        sampler.stop.set()
        sampler.join()
    peak = max(sampler.peak, _status_kb("VmRSS") or 0)
    box.append(MemoryPeak(max(0, peak - before), "cpu_rss_sampled_delta", rss_peak_bytes=peak))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def attention_backend(device: torch.device) -> str:
    if device.type != "cuda":
        return "torch SDPA (CPU kernels)"
    flags = torch.backends.cuda
    enabled = [name for name, on in (("flash", flags.flash_sdp_enabled()), ("mem_efficient", flags.mem_efficient_sdp_enabled()),
                                     ("math", flags.math_sdp_enabled())) if on]
    return "torch SDPA (" + ", ".join(enabled) + " enabled)"


def environment(pipeline) -> dict:
    """The environment block of every report: enough to tell whether two numbers are comparable."""
    dev = pipeline.device
    return {
        "stepvar_version": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": device_name(dev),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": str(pipeline.dtype).replace("torch.", ""),
        "attention": attention_backend(dev),
        "model": pipeline.preset.name,
        "model_status": pipeline.status,
        "text_encoder": pipeline.text_encoder.name,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": _load_average(),
        "cpu_busy_before": cpu_busy_fraction(),
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]), idle


def cpu_busy_fraction(window_s: float = 0.1) -> float | None:
    """Share of all cores busy over a short window, measured while this process waits (i.e. other processes)."""
    a = _cpu_times()
    time.sleep(window_s)
    b = _cpu_times()
    if a is None or b is None or b[0] == a[0]:
        return None
    return round(1.0 - (b[1] - a[1]) / (b[0] - a[0]), 3)


def busy_machine_note(busy: float | None, when: str) -> str | None:
    """A warning when other processes kept the CPU busy (absolute times suffer most; ratios less)."""
    if busy is not None and busy >= 0.2:
        return (f"other processes kept {100 * busy:.0f}% of the CPU busy {when}: absolute times are unreliable; "
                "interleaving keeps the ratios fairer, but rerun on a quiet machine for numbers to quote")
    return None
