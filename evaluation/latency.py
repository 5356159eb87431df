"""Latency harness: warm-up, then round-robin timed runs so every variant sees the same machine state.

Variants are interleaved (A, B, C, A, B, C, ...) within one process, so a
background load or thermal change hits all of them alike and their ratios stay
fair. Median and p90 are reported with the number of runs and threads.

Each visit is one untimed run and then ``block`` timed runs back to back
(A A A, B B B, ...). The untimed run re-warms the caches other variants evicted
and absorbs the previous runtime's worker threads, which spin-wait after a run
(ONNX Runtime, OpenMP, XNNPACK) and steal the cores of whatever runs next
(benchmarks/bench_latency_harness.py compares both ways with each variant alone).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm


def measure_latency(
    calls: dict[Any, Callable[[], Any]], runs: int = 10, warmup: int = 2, progress: bool = False, block: int = 5,
    clocks: dict[Any, Callable[[int], list[float]]] | None = None,
) -> dict[Any, dict[str, float]]:
    """Time each zero-argument call ``runs`` times, round-robin in blocks of ``block``; returns ms stats per name.

    A call with a clock (``clocks[name](n)``: n more runs of what the call ran, timed where it runs, in ms, e.g.
    inside a browser page) is timed by that clock, so moving tensors to and from it is not counted.
    """
    clocks = clocks or {}
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(-(-runs // block)), desc="latency", disable=not progress, leave=False):
        for name, call in calls.items():
            call()  # untimed: re-warms caches, absorbs the previous runtime's spinning threads
            count = min(block, runs - len(times[name]))
            if name in clocks:
                times[name] += clocks[name](count)
                continue
            for _ in range(count):
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: summarize(values) for name, values in times.items()}


def summarize(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms)
    return {
        "p50": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "runs": len(values_ms),
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, OS and library versions."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for module in ("onnxruntime", "ai_edge_litert"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    from exports.backends.onnxruntime import x86_vnni

    # False: int8 convs run without dot-product instructions (slower) and ORT static int8 takes 7-bit weights
    info["x86_vnni"] = x86_vnni()
    return info
