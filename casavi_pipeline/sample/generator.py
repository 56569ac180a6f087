"""A realistic German ERP export in the contract's format (`shared/erp-export.md`), deterministic per seed.

Faker (`de_DE`) is called only to fill small pools of names, streets and towns once per seed; rows are
drawn from those pools with one seeded `random.Random` per Mandant, and each Mandant is written before
the next is built, so 500 000 units take seconds per Mandant and bounded memory.

What it contains, on purpose: WEG (ownership) and rental economic units with 1-4 buildings each,
mixed Nutzungsarten, multi-tenant contracts, ended and future contracts, vacant units, ~10 % tenants
without or with an invalid email, email fields holding two addresses, persons who are tenant and owner,
companies as owners, and persons whose rows differ across contracts (a changed phone number).
"""

from __future__ import annotations

import csv
import datetime as dt
import random
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from faker import Faker

from casavi_pipeline.erp.contract import ENTITIES, Entity

Row = dict[str, str]
TODAY = dt.date(2026, 11, 1)  # fixed, so output does not depend on the day it is generated
INVALID_EMAILS = ("max@", "a b@c.de", "mueller.de", "info@localhost", "@example.org")
NUTZUNGSARTEN = (("WOHNUNG", 80), ("GEWERBE", 7), ("STELLPLATZ", 7), ("GARAGE", 4), ("SONSTIGE", 2))
FLOORS = ("EG", "1. OG", "2. OG", "3. OG", "4. OG", "DG", "UG")
SIDES = ("links", "rechts", "Mitte")


@dataclass(frozen=True)
class Pools:
    """Names and places drawn from Faker once; rows pick from these."""

    male: list[str]
    female: list[str]
    last: list[str]
    streets: list[str]
    towns: list[tuple[str, str]]  # (plz, ort)
    companies: list[str]

    @classmethod
    def build(cls, seed: int) -> Pools:
        fake = Faker("de_DE")
        fake.seed_instance(seed)

        def unique(make, n: int) -> list[str]:
            values = sorted({v for v in (make() for _ in range(n * 3)) if _cp1252(v)})
            return values[:n]

        return cls(
            male=unique(fake.first_name_male, 150),
            female=unique(fake.first_name_female, 150),
            last=unique(fake.last_name, 400),
            streets=unique(fake.street_name, 300),
            towns=sorted({(fake.postcode(), fake.city()) for _ in range(300)})[:200],
            companies=unique(fake.company, 120),
        )


def _cp1252(value: str) -> bool:
    try:
        value.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _ascii(value: str) -> str:
    """`Müller-Lüdenscheidt` → `mueller-luedenscheidt`, for email local parts."""
    value = value.lower().replace("ä", "ae").replace("ö", "oe").replace("ü", "ue").replace("ß", "ss")
    value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return "".join(c for c in value if c.isalnum() or c in ".-")


class MandantBuilder:
    """Builds all seven entities of one Mandant."""

    def __init__(self, mandant: str, units: int, pools: Pools, seed: int) -> None:
        self.mandant = mandant
        self.units = units
        self.pools = pools
        self.rng = random.Random(f"{seed}-{mandant}")
        self.rows: dict[str, list[Row]] = {e.name: [] for e in ENTITIES}
        self._person_seq = 0
        self._contract_seq = 0
        self._owner_seq = 0

    # --- people ------------------------------------------------------------------------------------
    def _person(self, *, company: bool = False) -> Row:
        rng, pools = self.rng, self.pools
        self._person_seq += 1
        plz, ort = rng.choice(pools.towns)
        person: Row = {"person_nr": f"{self._person_seq:06d}", "plz": plz, "ort": ort, "land": "DE"}
        person["strasse"], person["hausnummer"] = rng.choice(pools.streets), str(rng.randint(1, 120))
        person["telefon"] = f"0{rng.randint(30, 9999)} {rng.randint(100000, 9999999)}"
        if rng.random() < 0.5:
            person["mobil"] = f"01{rng.choice((51, 52, 57, 60, 70, 76))} {rng.randint(1000000, 99999999)}"
        if company:
            person.update(anrede="Firma", firma=rng.choice(pools.companies))
            local, domain = "info", _ascii(person["firma"].split()[0]) or "firma"
        else:
            female = rng.random() < 0.5
            first = rng.choice(pools.female if female else pools.male)
            last = rng.choice(pools.last)
            anrede = "Divers" if rng.random() < 0.01 else ("Frau" if female else "Herr")
            person.update(anrede=anrede if rng.random() > 0.03 else "", vorname=first, nachname=last)
            if rng.random() < 0.04:
                person["titel"] = rng.choice(("Dr.", "Prof. Dr."))
            local, domain = (
                f"{_ascii(first)}.{_ascii(last)}",
                rng.choice(("web", "gmx", "t-online", "posteo")),
            )
        person["email"] = self._email(f"{local}{self._person_seq}@{domain}.de")
        return person

    def _email(self, good: str) -> str:
        draw = self.rng.random()
        if draw < 0.05:
            return ""
        if draw < 0.09:
            return self.rng.choice(INVALID_EMAILS)
        if draw < 0.11:
            return f"{self.rng.choice(INVALID_EMAILS[:2])}; {good}"  # first invalid, second valid
        if draw < 0.13:
            return f"{good}, zweit.{good}"
        return good

    # --- real estate -------------------------------------------------------------------------------
    def build(self) -> dict[str, list[Row]]:
        rng = self.rng
        remaining, we = self.units, 0
        while remaining > 0:
            we += 1
            size = min(remaining, max(1, int(rng.triangular(4, 60, 18))))
            remaining -= size
            self._economic_unit(f"{we:04d}", size, weg=rng.random() < 0.3)
        return self.rows

    def _economic_unit(self, we_nr: str, size: int, *, weg: bool) -> None:
        rng, pools = self.rng, self.pools
        plz, ort = rng.choice(pools.towns)
        street = rng.choice(pools.streets)
        first_number = rng.randint(1, 90)
        kind = "WEG" if weg else "Wohnanlage"
        self.rows["wirtschaftseinheiten"].append(
            {"we_nr": we_nr, "bezeichnung": f"{kind} {street} {first_number}", "strasse": street,
             "hausnummer": str(first_number), "plz": plz, "ort": ort, "land": "DE"}
        )  # fmt: skip
        buildings = [f"{b:02d}" for b in range(1, min(4, max(1, size // 8)) + 1)]
        for i, geb_nr in enumerate(buildings):
            number = f"{first_number + 2 * i}{rng.choice(('', '', '', 'a', 'b'))}"
            self.rows["gebaeude"].append(
                {"we_nr": we_nr, "geb_nr": geb_nr, "strasse": street, "hausnummer": number,
                 "plz": plz, "ort": ort, "land": "DE"}
            )  # fmt: skip
        for v in range(1, size + 1):
            unit = self._unit(we_nr, f"{v:04d}", rng.choice(buildings))
            if weg:
                self._ownership(unit)
            if not weg or rng.random() < 0.4:  # WEG units are often owner-occupied
                self._rentals(unit)

    def _unit(self, we_nr: str, ve_nr: str, geb_nr: str) -> Row:
        rng = self.rng
        nutzungsart = rng.choices([n for n, _ in NUTZUNGSARTEN], [w for _, w in NUTZUNGSARTEN])[0]
        unit: Row = {"we_nr": we_nr, "ve_nr": ve_nr, "geb_nr": geb_nr, "nutzungsart": nutzungsart}
        if nutzungsart == "WOHNUNG":
            unit.update(
                lage=f"{rng.choice(FLOORS)} {rng.choice(SIDES)}",
                flaeche_m2=f"{rng.uniform(28, 140):.2f}",
                zimmer=str(rng.choice((1, 1.5, 2, 2.5, 3, 3.5, 4, 5))),
            )
        elif nutzungsart == "GEWERBE":
            unit.update(lage=rng.choice(FLOORS), flaeche_m2=f"{rng.uniform(35, 400):.1f}")
        elif nutzungsart in ("STELLPLATZ", "GARAGE"):
            unit.update(lage=f"{'TG-Platz' if nutzungsart == 'STELLPLATZ' else 'Box'} {rng.randint(1, 80)}")
            unit["flaeche_m2"] = "12.5"
        if rng.random() < 0.08:
            unit["lage"] = ""  # the name then falls back to "<label> <ve_nr>"
        self.rows["verwaltungseinheiten"].append(unit)
        return unit

    def _date(self, start: int, end: int) -> dt.date:
        return dt.date(start, 1, 1) + dt.timedelta(days=self.rng.randint(0, (end - start) * 365))

    def _rentals(self, unit: Row) -> None:
        rng = self.rng
        draw = rng.random()
        if draw < 0.07:
            return  # vacant
        if draw < 0.09:  # vacant now, let from next month on
            self._lease(unit, TODAY + dt.timedelta(days=rng.randint(20, 90)), None)
            return
        begin = self._date(1995, 2026)
        if begin > TODAY:
            begin = TODAY - dt.timedelta(days=30)
        if rng.random() < 0.2 and begin.year > 1998:  # the previous tenancy, ended
            ended = begin - dt.timedelta(days=1)
            self._lease(unit, ended - dt.timedelta(days=rng.randint(200, 2500)), ended)
        self._lease(unit, begin, None)

    def _lease(self, unit: Row, begin: dt.date, end: dt.date | None) -> None:
        rng = self.rng
        self._contract_seq += 1
        vertrag_nr = f"{self._contract_seq:07d}"
        self.rows["mietvertraege"].append(
            {"vertrag_nr": vertrag_nr, "we_nr": unit["we_nr"], "ve_nr": unit["ve_nr"],
             "beginn": begin.isoformat(), "ende": end.isoformat() if end else ""}
        )  # fmt: skip
        tenants = rng.choices((1, 2, 3), (70, 28, 2))[0]
        commercial = unit["nutzungsart"] == "GEWERBE"
        for i in range(tenants if not commercial else 1):
            person = self._reused_tenant() if i == 0 and rng.random() < 0.03 else None
            person = person or self._person(company=commercial)
            if i == 1 and tenants > 1:  # a couple: same address and surname
                person["nachname"] = self.rows["mieter"][-1].get("nachname", person.get("nachname", ""))
            self.rows["mieter"].append({"vertrag_nr": vertrag_nr, **person})

    def _reused_tenant(self) -> Row | None:
        """A person already known in this Mandant (moved, or rents a garage too), phone since changed."""
        if not self.rows["mieter"]:
            return None
        known = dict(self.rng.choice(self.rows["mieter"]))
        known.pop("vertrag_nr")
        if self.rng.random() < 0.5:
            known["telefon"] = f"0{self.rng.randint(30, 9999)} {self.rng.randint(100000, 9999999)}"
        return known

    def _ownership(self, unit: Row) -> None:
        rng = self.rng
        self._owner_seq += 1
        ev_nr = f"{self._owner_seq:07d}"
        self.rows["eigentuemervertraege"].append(
            {"ev_nr": ev_nr, "we_nr": unit["we_nr"], "ve_nr": unit["ve_nr"],
             "beginn": self._date(1980, 2025).isoformat(), "ende": ""}
        )  # fmt: skip
        for i in range(rng.choices((1, 2), (75, 25))[0]):
            if i == 0 and rng.random() < 0.05 and self.rows["mieter"]:
                owner = dict(rng.choice(self.rows["mieter"]))  # a tenant elsewhere owns this unit
                owner.pop("vertrag_nr")
            else:
                owner = self._person(company=i == 0 and rng.random() < 0.1)
            self.rows["eigentuemer"].append({"ev_nr": ev_nr, **owner})


def write_rows(path: Path, entity: Entity, rows: Iterable[Row], encoding: str = "utf-8") -> None:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=";", quotechar='"', lineterminator="\n")
        writer.writerow(entity.column_names)
        for row in rows:
            writer.writerow([row.get(column, "") for column in entity.column_names])


def mandant_numbers(count: int) -> list[str]:
    return [f"{i:04d}" for i in range(1, count + 1)]


def generate(
    out: Path, *, units: int, mandanten: list[str], seed: int = 42, encoding: str = "utf-8"
) -> dict[str, int]:
    """Write the export under `out`; return the number of units per Mandant."""
    pools = Pools.build(seed)
    per_mandant = {
        m: units // len(mandanten) + (1 if i < units % len(mandanten) else 0) for i, m in enumerate(mandanten)
    }
    for mandant, count in per_mandant.items():
        rows = MandantBuilder(mandant, count, pools, seed).build()
        folder = out / mandant
        folder.mkdir(parents=True, exist_ok=True)
        for entity in ENTITIES:
            write_rows(folder / entity.file_name, entity, rows[entity.name], encoding)
    return per_mandant
