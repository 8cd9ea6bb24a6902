"""Timing and memory helpers for the eval/bench_*.py scripts: interleaved repeats, medians, ratios, peaks.

Candidates are timed in turns (A B C, A B C, ...) so drift in machine load hits all of them
alike; a benchmark reports ratios between candidates measured in the same run.
"""

from __future__ import annotations

import ctypes
import platform
import resource
import statistics
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from jointobj.evaluation.report import write_json


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_peak_bytes(run: Callable[[], object]) -> int:
    """Bytes of CUDA memory `run()` needs above what was allocated before it (its peak, less what was held)."""
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - held


def peak_bytes(run: Callable[[], object]) -> int:
    """Bytes `run()` needs above what was held before it: CUDA's peak allocated bytes, or on a Linux CPU
    the largest resident set a sampling thread sees while it runs (torch ops release the GIL), less the
    resident set just before it (freed heap handed back first, so that is what is held)."""
    if torch.cuda.is_available():
        return cuda_peak_bytes(run)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    held = resident_bytes()
    peak, done = [held], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(2e-4)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return peak[0] - held


class LiveStorageLedger(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the block and alive together (CPU stand-in for
    max_memory_allocated)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int, size: int) -> None:
        if self.live.pop(key, None) is not None:
            self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.live:
                    self.live[key] = size
                    self.now += size
                    weakref.finalize(storage, self._free, key, size)
                    self.peak = max(self.peak, self.now)
        return out


def tensor_peak_bytes(run: Callable[[], object]) -> int:
    """Peak bytes of the tensor storages `run()` creates and holds at one moment (activations, logits,
    gradients, optimiser state made inside; not what existed before): on CPU, where torch keeps no
    allocator statistics, the stand-in for CUDA's max_memory_allocated; unlike the resident set it
    sees neither allocator caches nor sampling noise."""
    with LiveStorageLedger() as ledger:
        run()
    return ledger.peak


def resident_bytes() -> int:
    """This process's resident set, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 20,
                     warmup: int = 3) -> dict[str, float]:
    """Median wall seconds of each candidate, run in turns `repeats` times after `warmup` turns."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for turn in range(warmup + repeats):
        for name, run in candidates.items():
            _sync()
            start = time.perf_counter()
            run()
            _sync()
            if turn >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_decoders(decoders: dict[str, Any], denoiser: Any, prompts: torch.Tensor, gen_length: int, batch: int,
                  seed: int, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each decoder sampling every prompt [n, lp], `batch` prompts per call (batch 1: one
    call per sample), each call seeded with `seed`; the decoders run in turns (`time_interleaved`)."""
    chunks = prompts.split(batch)

    def runner(decoder: Any) -> Callable[[], None]:
        def run() -> None:
            for chunk in chunks:
                decoder.sample(denoiser, chunk, gen_length, torch.Generator().manual_seed(seed))
        return run

    return time_interleaved({label: runner(d) for label, d in decoders.items()}, repeats=repeats, warmup=warmup)


def environment() -> dict[str, object]:
    """Where a figure was measured, stored beside it."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "device": device, "threads": torch.get_num_threads()}


def write_measurements(path: str | Path, rows: list[dict], **context: object) -> Path:
    """Rows as JSON with where they were measured (`environment()`) and any context beside them."""
    return write_json(path, {"environment": environment(), **context, "rows": rows})
