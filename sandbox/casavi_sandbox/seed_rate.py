"""How fast the sandbox takes an import: `python -m casavi_sandbox.seed_rate --units 100000`.

Seeds one Mandant of synthetic objects into a fresh sandbox process through `SandboxProcess.seed`
(40 units a property at 4 streets, 1.8 contacts a unit carrying 1.6 contracts a unit: 100 000 units
give 282 500 objects) and prints objects per second end to end: building the bodies, JSON over HTTP,
validation, the SQLite transactions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from casavi_sandbox.contract import Kind
from casavi_sandbox.process import SEED_BATCH, SandboxProcess

UNITS_PER_PROPERTY = 40
STREETS_PER_PROPERTY = 4


def _street(n: int) -> str:
    return f"Lindenstraße {n}"


def mandant(units: int, prefix: str = "0420") -> Iterator[tuple[Kind, dict[str, Any]]]:
    """Properties, then units, then contacts with their contracts of one synthetic Mandant, as casavi
    bodies (revision 2: addresses by street, contracts inside the contacts)."""
    properties = -(-units // UNITS_PER_PROPERTY)
    for p in range(properties):
        addresses = [{"street": _street(n)} for n in range(1, STREETS_PER_PROPERTY + 1)]
        yield (
            Kind.PROPERTY,
            {
                "id": f"{prefix}-{p}",
                "name": f"Objekt {p}",
                "number": str(p),
                "postalCode": "10115",
                "city": "Berlin",
                "country": "Germany",
                "addresses": addresses,
            },
        )
    for u in range(units):
        p = u // UNITS_PER_PROPERTY
        yield (
            Kind.UNIT,
            {
                "id": f"{prefix}-{p}-{u}",
                "propertyId": f"{prefix}-{p}",
                "address": _street(u % STREETS_PER_PROPERTY + 1),
                "name": f"Wohnung {u}",
                "number": str(u),
                "usage": "PRIVATE",
                "area": 61.5,
                "rooms": 2.5,
            },
        )
    for u in range(units):
        for c, contracts in enumerate(_contracts_of(u, prefix)):
            yield (
                Kind.CONTACT,
                {
                    "id": f"{prefix}-k{u}-{c}",
                    "lastName": f"Muster {u}",
                    "firstName": "Erika",
                    "email": f"m{u}.{c}@example.org",
                    "preferredWayOfContact": "ONLINE",
                    "contracts": contracts,
                },
            )


def _contracts_of(unit: int, prefix: str) -> list[list[dict[str, Any]]]:
    """The contracts of each contact of a unit. 1.8 contacts a unit on average: 3 fifths have a previous
    tenant (one contact of their own, an ended contract), 1 fifth two current tenants on one contract."""
    contacts = (1, 3, 2, 2, 1)[unit % 5]
    p = unit // UNITS_PER_PROPERTY
    ids = {"propertyId": f"{prefix}-{p}", "unitId": f"{prefix}-{p}-{unit}"}
    current = {"type": "RENTER", **ids, "number": f"{unit}-1", "startDate": "2020-01-01", "endDate": None}
    previous = {
        "type": "RENTER",
        **ids,
        "number": f"{unit}-0",
        "startDate": "2010-01-01",
        "endDate": "2019-12-31",
    }
    current_tenants = 2 if contacts > 2 else 1
    return [[current] if c < current_tenants else [previous] for c in range(contacts)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=SEED_BATCH)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, SandboxProcess(Path(folder) / "seed.sqlite3") as sandbox:
        started = time.perf_counter()
        totals = sandbox.seed(mandant(args.units), batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        print(
            f"seeded {totals['seeded']} objects ({args.units} units) in {seconds:.1f}s: "
            f"{totals['seeded'] / seconds:,.0f} objects/s end to end"
        )


if __name__ == "__main__":
    main()
