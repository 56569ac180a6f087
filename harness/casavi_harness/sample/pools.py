"""Value pools for the sample export, drawn from Faker (`de_DE`) once per seed.

Faker is slow per call (~20 µs), so it never runs per row: it fills a few hundred names, streets and
towns once, and the generator draws row values from these pools with a seeded numpy Generator.
Every pool value is encodable in cp1252, so the export can also be written for older ERPs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from faker import Faker

_LEGAL_FORMS = (
    "GmbH",
    "GmbH & Co. KG",
    "KG",
    "AG",
    "Immobilien GmbH",
    "Grundbesitz GmbH",
    "Vermögensverwaltung GbR",
)
_MAIL_DOMAINS = (
    "web.de",
    "gmx.de",
    "gmx.net",
    "t-online.de",
    "gmail.com",
    "posteo.de",
    "outlook.de",
    "freenet.de",
)
#: Real German dialling codes (Berlin, Hamburg, München, Köln, Frankfurt, Stuttgart, Dresden, Leipzig, ...).
_AREA_CODES = ("030", "040", "089", "0221", "069", "0711", "0351", "0341", "0511", "0911", "0201", "0421")
_MOBILE_PREFIXES = ("0151", "0152", "0157", "0160", "0170", "0171", "0176", "0179")


def _encodable(value: str) -> bool:
    try:
        value.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def ascii_fold(value: str) -> str:
    """`Müller-Lüdenscheidt` → `mueller-luedenscheidt`: how people spell their name in an email address."""
    value = value.lower().replace("ä", "ae").replace("ö", "oe").replace("ü", "ue").replace("ß", "ss")
    value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return "".join(c for c in value if c.isalnum() or c in ".-")


def _objects(values: list[str]) -> np.ndarray:
    """An object array: numpy then concatenates Python strings element-wise with `+`."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


@dataclass(frozen=True)
class Pools:
    """Name and place pools (numpy object arrays) plus their ASCII spellings for email addresses."""

    male: np.ndarray
    female: np.ndarray
    last: np.ndarray
    male_ascii: np.ndarray
    female_ascii: np.ndarray
    last_ascii: np.ndarray
    streets: np.ndarray
    plz: np.ndarray  # plz[i] belongs to ort[i]
    ort: np.ndarray
    companies: np.ndarray
    company_domains: np.ndarray  # e.g. `schaefer-immobilien.de`
    mail_domains: np.ndarray
    area_codes: np.ndarray
    mobile_prefixes: np.ndarray

    @classmethod
    def build(cls, seed: int) -> Pools:
        fake = Faker("de_DE")
        fake.seed_instance(seed)

        def unique(make: Callable[[], str], n: int) -> list[str]:
            # sorted, so the pool does not depend on set iteration order
            return sorted({v for v in (make() for _ in range(n * 3)) if _encodable(v)})[:n]

        male, female, last = (
            unique(fake.first_name_male, 200),
            unique(fake.first_name_female, 200),
            unique(fake.last_name, 600),
        )
        towns = sorted({(fake.postcode(), fake.city()) for _ in range(400)})[:250]
        company_rng = np.random.default_rng(seed)
        owners = company_rng.choice(last, 150, replace=False)
        forms = company_rng.choice(len(_LEGAL_FORMS), 150)
        companies = sorted({f"{name} {_LEGAL_FORMS[form]}" for name, form in zip(owners, forms, strict=True)})
        return cls(
            male=_objects(male),
            female=_objects(female),
            last=_objects(last),
            male_ascii=_objects([ascii_fold(v) for v in male]),
            female_ascii=_objects([ascii_fold(v) for v in female]),
            last_ascii=_objects([ascii_fold(v) for v in last]),
            streets=_objects(unique(fake.street_name, 500)),
            plz=_objects([plz for plz, _ in towns]),
            ort=_objects([ort for _, ort in towns]),
            companies=_objects(companies),
            company_domains=_objects(
                [f"{ascii_fold(c.split()[0])}-{ascii_fold(c.split()[1])}.de" for c in companies]
            ),
            mail_domains=_objects(list(_MAIL_DOMAINS)),
            area_codes=_objects(list(_AREA_CODES)),
            mobile_prefixes=_objects(list(_MOBILE_PREFIXES)),
        )
