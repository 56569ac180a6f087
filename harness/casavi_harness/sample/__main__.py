"""`python -m casavi_harness.sample --out DIR --units N --mandanten K`: write a generated ERP export."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from casavi_harness.sample.generator import generate, mandant_numbers

#: The command that regenerates the committed sample (`harness/casavi_harness/sample_export`), seed 42 (default).
SAMPLE_ARGS = [
    "--out",
    "harness/casavi_harness/sample_export",
    "--units",
    "300",
    "--mandanten",
    "0001,0002,0420",
]
_MANDANT_NR = re.compile(r"[0-9A-Za-z]+")  # an ERP number: none of the id separators - _ . / |


def parse_mandanten(value: str) -> list[str]:
    """`20` → 0001..0020 (a count); `0420` or `0001,0420` → those Mandant numbers, zeros kept."""
    if value.isdigit() and not value.startswith("0"):
        return mandant_numbers(int(value))
    numbers = [part.strip() for part in value.split(",")]
    if not all(_MANDANT_NR.fullmatch(n) for n in numbers) or len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(
            f"expected a count or distinct Mandant numbers like 0001,0420, got {value!r}"
        )
    return numbers


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m casavi_harness.sample", description=__doc__)
    parser.add_argument(
        "--out", type=Path, required=True, help="export folder to write (one sub-folder per Mandant)"
    )
    parser.add_argument(
        "--units",
        type=_non_negative,
        default=1000,
        help="Verwaltungseinheiten in total (default %(default)s)",
    )
    parser.add_argument(
        "--mandanten",
        type=parse_mandanten,
        default="3",
        help="a count (0001, 0002, ...) or a comma list of Mandant numbers (default %(default)s)",
    )
    parser.add_argument("--seed", type=_non_negative, default=42, help="same arguments and seed, same bytes")
    parser.add_argument("--encoding", choices=("utf-8", "cp1252"), default="utf-8")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    per_mandant = generate(
        args.out, units=args.units, mandanten=args.mandanten, seed=args.seed, encoding=args.encoding
    )
    print(
        f"wrote {sum(per_mandant.values())} units for {len(per_mandant)} Mandanten to {args.out} "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
