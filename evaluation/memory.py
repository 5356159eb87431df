"""Peak resident memory of one inference, measured in a fresh process.

What is measured, in a child process: the resident set size after importing
torch / the runtime (``baseline``), then the peak RSS while loading the
variant and running one inference (``peak``). On Linux the kernel's peak
counter is reset after the imports (``/proc/self/clear_refs``), so an import
spike does not hide the inference; elsewhere ``peak`` is ``ru_maxrss`` since
process start. ``peak - baseline`` is what the variant adds. Python-level
tracers (tracemalloc) would miss native tensor memory, hence RSS.

Run as ``python -m evaluation.memory TARGET SIZE THREADS [STYLE]``; prints JSON.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def _max_rss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _status_bytes(key: str) -> int | None:
    """VmRSS / VmHWM from /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(target: Path, size: int, threads: int, style: Path | None = None, timeout: float = 300) -> dict:
    """``{"baseline_rss_bytes", "peak_rss_bytes", "inference_rss_bytes"}`` of ``target`` at ``size`` px."""
    cmd = [sys.executable, "-m", "evaluation.memory", str(target), str(size), str(threads)]
    if style is not None:
        cmd.append(str(style))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{target}: memory probe failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(target: str, size: int, threads: int, style_path: str | None) -> dict:
    import torch

    from compressor.data import load_image
    from evaluation.variants import load_variant  # imports exports.runtime: counted in the baseline

    torch.set_num_threads(threads)
    style = load_image(style_path, size=size).unsqueeze(0) if style_path else torch.rand(1, 3, size, size)
    x = torch.rand(1, 3, size, size)
    reset = _reset_peak()
    baseline = _status_bytes("VmRSS") if reset else _max_rss_bytes()
    variant = load_variant(target)
    with torch.no_grad():
        variant.runner(style, threads)(x)
    peak = _status_bytes("VmHWM") if reset else _max_rss_bytes()
    return {"baseline_rss_bytes": baseline, "peak_rss_bytes": peak, "inference_rss_bytes": peak - baseline,
            "peak_reset_after_imports": reset}


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(_child(args[0], int(args[1]), int(args[2]), args[3] if len(args) > 3 else None)))
