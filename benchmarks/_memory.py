"""Peak extra memory of one call, on CPU (resident set size) or CUDA (caching allocator).

* CPU: with glibc's mmap threshold pinned at 64 KiB (:func:`pin_malloc`, done for the whole
  benchmark session) and after ``gc.collect()`` and ``malloc_trim(0)`` (so that memory freed
  earlier is no longer resident and cannot hide a new allocation), the peak-RSS counter
  ``VmHWM`` is reset
  through ``/proc/self/clear_refs`` ("5"); the figure is ``VmHWM`` after the call minus
  ``VmRSS`` before it. Where clear_refs is not writable it falls back to the growth of
  ``ru_maxrss`` (a lower bound).
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the call.

Inputs allocated before the call are excluded; everything the call allocates (outputs,
temporaries, library buffers) is included.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import resource

import torch

CPU_METHOD = (
    "peak resident set size during one call (VmHWM reset via /proc/self/clear_refs, after "
    "gc + malloc_trim; glibc mmap threshold pinned at 64 KiB) minus the RSS before it"
)
CUDA_METHOD = "torch.cuda.max_memory_allocated during one call minus memory allocated before"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def pin_malloc() -> None:
    """Make glibc serve every allocation ≥ 64 KiB by mmap and return it on free.

    By default glibc raises its mmap threshold (up to 32 MiB) after large frees and then serves
    such blocks from the heap, where freed memory stays resident and fragments: the RSS peak of
    a call would depend on what ran before it. With the threshold pinned (which also disables
    the dynamic raise) RSS follows live memory. The cost is a page fault per fresh page of a
    large allocation (about 1 % on the chunked solver here).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def trim() -> None:
    """Collect garbage and return glibc's free memory to the OS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """``with PeakMemory(dev) as m: call()`` then ``m.peak_mb`` (MiB) and ``m.method``."""

    def __init__(self, dev: str) -> None:
        self.cuda = dev.startswith("cuda")
        self.peak_mb = float("nan")
        self.method = CUDA_METHOD if self.cuda else CPU_METHOD
        self._base = 0
        self._hwm = False

    def __enter__(self) -> PeakMemory:
        trim()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm = True
        except OSError:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "growth of ru_maxrss during one call (a lower bound)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif self._hwm:
            self.peak_mb = max(0, _status_kb("VmHWM") - self._base) / 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mb = max(0, peak - self._base) / 1024
