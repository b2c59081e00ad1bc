"""Run every benchmark module, or the ones named: `python -m benchmarks [daemon console media ...]`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    available = sorted(name[len("bench_"):] for _, name, _ in pkgutil.iter_modules([str(Path(__file__).parent)])
                       if name.startswith("bench_"))
    chosen = argv or available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    failed = 0
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(f"benchmarks.bench_{name}")
        failed += 1 if module.main([]) else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
