"""``make bench`` / ``python -m benchmarks.run``: the benchmark tables, each from its module.

Every benchmark module has ``run(home, results_dir) -> figures`` and ``table(figures) -> str``;
add one to :data:`BENCHMARKS` (e.g. ``benchmarks/batch.py`` for batch scoring).
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("serving", "batch", "webjob")


def main(argv: list[str] | None = None) -> None:
    """Run the chosen benchmarks (default: all) and print their tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="state folder with a champion (default: $SYSTEMHEALER_HOME if it has one, "
        "else a small champion trained into a temporary folder)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where figures are kept")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    home = args.home or _home_with_champion()
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        figures = module.run(home=home, results_dir=args.results)
        print(f"\n## {name}\n\n{module.table(figures)}\n", flush=True)


def _home_with_champion() -> Path | None:
    """``$SYSTEMHEALER_HOME`` when it holds a champion; None otherwise."""
    if "SYSTEMHEALER_HOME" not in os.environ:
        return None
    from systemhealer import tracking
    from systemhealer.config import load_settings

    settings = load_settings()
    if not (settings.home / "mlflow.db").exists():
        return None
    return settings.home if tracking.champion(settings) is not None else None


if __name__ == "__main__":
    main()
