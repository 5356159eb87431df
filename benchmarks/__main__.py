"""Run every benchmarks/bench_*.py and write one combined JSON + table: ``python -m benchmarks [--quick] [--out F]``.

Convention (see benchmarks/README.md): a bench module exposes ``run(quick: bool) -> dict`` returning
``{"table": [row dicts], ...}``; a module without ``run`` is run as a subprocess with
``--quick --out <tmp.json>`` and its JSON is read back (its ``table`` key, if any, is printed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """One bench module's result dict, plus its wall time and status; a failure is recorded, not raised."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        if hasattr(module, "run"):
            result = module.run(quick)
        else:
            result = _subprocess(name, quick)
        status = "ok"
    except Exception as exc:  # one broken benchmark must not hide the others
        result, status = {}, f"failed: {type(exc).__name__}: {exc}"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), **result}


def _subprocess(name: str, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out)] + (["--quick"] if quick else [])
        done = subprocess.run(cmd, text=True, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-800:]}")
        return json.loads(out.read_text()) if out.is_file() else {"stdout": done.stdout[-4000:]}


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="passed through to every benchmark")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "all.json")
    parser.add_argument("--only", nargs="*", help="bench names to run, e.g. bench_prune")
    args = parser.parse_args(argv)
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    names = [n for n in names if not args.only or n in args.only]
    results = {}
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = run_one(name, args.quick)
        print(f"{results[name]['status']} in {results[name]['seconds']} s")
        print(format_table(results[name].get("table", [])), flush=True)
    from compressor.io import write_json
    from evaluation.latency import machine_info

    doc = {"quick": args.quick, "machine": machine_info(), "benchmarks": results}
    write_json(args.out, doc, default=str)
    print(f"combined results: {args.out}")
    if any(r["status"] != "ok" for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
