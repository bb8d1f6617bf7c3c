"""`python -m bench [name ...]` (make bench): the benchmarks (all by default, or by name, such as
`latency`), each with ratios against its own baseline."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "bench.html_to_text",
    "bench.health",
    "bench.pipeline",
    "bench.r2_worker",
    "bench.latency",
    "bench.deliveries",
)


def main(names: list[str]) -> int:
    """Runs the named benchmarks (all by default); a failing one does not stop the others."""
    failed = 0
    for name in [n if n.startswith("bench.") else f"bench.{n}" for n in names] or BENCHMARKS:
        print(f"\n== {name} ==", flush=True)
        try:
            importlib.import_module(name).main()
        except Exception as exc:  # a broken benchmark is reported, the rest still run
            failed += 1
            print(f"{name} failed: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
