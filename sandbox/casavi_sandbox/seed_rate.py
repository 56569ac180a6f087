"""How fast the sandbox takes an import: `python -m casavi_sandbox.seed_rate --units 100000`.

Seeds one Mandant of synthetic objects into a fresh sandbox process through `SandboxProcess.seed`
(40 units a property, 1.6 contracts and 1.8 contacts a unit: 100 000 units give 442 500 objects) and prints objects per second end to end: building
the bodies, JSON over HTTP, validation, the SQLite transactions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from casavi_pipeline.casavi import api
from casavi_sandbox.process import SEED_BATCH, SandboxProcess

UNITS_PER_PROPERTY = 40


def mandant(units: int, prefix: str = "0420") -> Iterator[tuple[api.ObjectKind, dict[str, Any]]]:
    """Properties, then units, contacts and contracts of one synthetic Mandant, as casavi bodies."""
    properties = -(-units // UNITS_PER_PROPERTY)
    for p in range(properties):
        addresses = [
            {"id": f"{n}", "street": f"Lindenstraße {n}", "postalCode": "10115", "city": "Berlin"}
            for n in range(1, 5)
        ]
        yield (
            api.ObjectKind.PROPERTY,
            {"id": f"{prefix}-{p}", "name": f"Objekt {p}", "number": str(p), "addresses": addresses},
        )
    for u in range(units):
        p = u // UNITS_PER_PROPERTY
        yield (
            api.ObjectKind.UNIT,
            {
                "id": f"{prefix}-{p}-{u}",
                "propertyId": f"{prefix}-{p}",
                "addressId": str(u % 4 + 1),
                "name": f"Wohnung {u}",
                "number": str(u),
                "usage": "PRIVATE",
                "area": 61.5,
                "rooms": 2.5,
            },
        )
    for u in range(units):
        for c in range(_contacts_of(u)):
            yield (
                api.ObjectKind.CONTACT,
                {
                    "id": f"{prefix}-k{u}-{c}",
                    "lastName": f"Muster {u}",
                    "firstName": "Erika",
                    "email": f"m{u}.{c}@example.org",
                    "preferredWayOfContact": "ONLINE",
                },
            )
    for u in range(units):
        p, contacts = u // UNITS_PER_PROPERTY, _contacts_of(u)
        unit = f"{prefix}-{p}-{u}"
        current = [f"{prefix}-k{u}-{c}" for c in range(2 if contacts > 2 else 1)]
        contracts = [(f"{unit}-1", current, "2020-01-01", None)]
        if contacts == 2 or contacts == 3:  # a previous tenant with one contact of their own
            contracts.append((f"{unit}-0", [f"{prefix}-k{u}-{contacts - 1}"], "2010-01-01", "2019-12-31"))
        for ref_id, contact_ids, start, end in contracts:
            yield (
                api.ObjectKind.CONTRACT,
                {
                    "id": ref_id,
                    "type": "RENTER",
                    "unitId": unit,
                    "contactIds": contact_ids,
                    "startDate": start,
                    "endDate": end,
                },
            )


def _contacts_of(unit: int) -> int:
    """1.8 contacts a unit on average: 3 fifths have a previous tenant, 1 fifth two current tenants."""
    return (1, 3, 2, 2, 1)[unit % 5]


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
