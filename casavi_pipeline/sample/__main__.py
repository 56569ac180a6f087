"""`python -m casavi_pipeline.sample --out DIR --units N --mandanten K`: write a generated ERP export."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from casavi_pipeline.sample.generator import generate, mandant_numbers

#: The command that regenerates the committed sample (`casavi_pipeline/sample_export`).
SAMPLE_ARGS = ["--out", "casavi_pipeline/sample_export", "--units", "300", "--mandanten", "0001,0002,0420"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, required=True, help="export folder to write (one sub-folder per Mandant)"
    )
    parser.add_argument(
        "--units", type=int, default=1000, help="total Verwaltungseinheiten (default %(default)s)"
    )
    parser.add_argument(
        "--mandanten", default="3", help="how many Mandanten (0001, 0002, ...) or a comma list of numbers"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--encoding", choices=("utf-8", "cp1252"), default="utf-8")
    args = parser.parse_args(argv)
    # "20" is a count (0001..0020); "0420" or "0001,0420" are Mandant numbers (they keep their zeros).
    is_count = args.mandanten.isdigit() and not args.mandanten.startswith("0")
    mandanten = mandant_numbers(int(args.mandanten)) if is_count else args.mandanten.split(",")
    started = time.perf_counter()
    per_mandant = generate(
        args.out, units=args.units, mandanten=mandanten, seed=args.seed, encoding=args.encoding
    )
    print(
        f"wrote {sum(per_mandant.values())} units for {len(per_mandant)} Mandanten to {args.out} "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
