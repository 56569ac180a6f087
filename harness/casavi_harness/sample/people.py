"""Person rows (tenants, owners) for the sample export, vectorised: one numpy draw per column, not per row.

Names and contact details are drawn in two steps so the caller can make couples share a surname
before the email addresses (which spell the surname) are derived.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from casavi_harness.sample.pools import Pools

#: Share of persons per email case; together ~10 % have no or only an invalid address.
EMPTY_EMAIL, INVALID_EMAIL, INVALID_THEN_VALID, TWO_VALID = 0.055, 0.05, 0.015, 0.02


def pick(g: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    return pool[g.integers(0, len(pool), n)]


def as_text(values: np.ndarray) -> np.ndarray:
    """Integers → an object array of decimal strings (concatenable with `+`)."""
    return values.astype(str).astype(object)


def names(g: np.random.Generator, pools: Pools, company: np.ndarray) -> pd.DataFrame:
    """anrede, titel, vorname, nachname, firma (+ `_first_ascii`, `_last_ascii`) for len(company) persons.

    A company (`company[i]`) has anrede `Firma`, a `firma` and no personal name, as ERPs keep it.
    """
    n = len(company)
    female = g.random(n) < 0.5
    female_index, male_index = g.integers(0, len(pools.female), n), g.integers(0, len(pools.male), n)
    first = np.where(female, pools.female[female_index], pools.male[male_index])
    first_ascii = np.where(female, pools.female_ascii[female_index], pools.male_ascii[male_index])
    last_index = g.integers(0, len(pools.last), n)
    salutation = g.random(n)
    anrede = np.where(
        salutation < 0.01, "Divers", np.where(salutation < 0.04, "", np.where(female, "Frau", "Herr"))
    )
    title = g.random(n)
    titel = np.where(title < 0.04, "Dr.", np.where(title < 0.045, "Prof. Dr.", ""))
    company_index = g.integers(0, len(pools.companies), n)
    return pd.DataFrame(
        {
            "anrede": np.where(company, "Firma", anrede).astype(object),
            "titel": np.where(company, "", titel).astype(object),
            "vorname": np.where(company, "", first),
            "nachname": np.where(company, "", pools.last[last_index]),
            "firma": np.where(company, pools.companies[company_index], ""),
            "_first_ascii": np.where(company, "", first_ascii),
            "_last_ascii": np.where(company, "", pools.last_ascii[last_index]),
            "_company_domain": np.where(company, pools.company_domains[company_index], ""),
        }
    )


def add_contact_details(g: np.random.Generator, pools: Pools, people: pd.DataFrame) -> pd.DataFrame:
    """Add email, telefon and mobil; the email cases are the ones the sync's email rule must handle."""
    n = len(people)
    first, last = people["_first_ascii"].to_numpy(), people["_last_ascii"].to_numpy()
    company = people["firma"].to_numpy() != ""
    domain_index = g.integers(0, len(pools.mail_domains), n)
    domain = pools.mail_domains[domain_index]
    other_domain = pools.mail_domains[
        (domain_index + g.integers(1, len(pools.mail_domains), n)) % len(pools.mail_domains)
    ]
    style = g.random(n)
    initial = np.array([f[:1] for f in first], dtype=object)
    local = np.where(style < 0.25, initial + "." + last, first + "." + last)
    local = np.where(style > 0.7, local + as_text(g.integers(50, 100, n)), local)  # birth year, e.g. 78
    company_local = pick(g, np.array(["info", "verwaltung", "kontakt", "buchhaltung"], dtype=object), n)
    good = np.where(company, company_local + "@" + people["_company_domain"].to_numpy(), local + "@" + domain)
    second = np.where(company, "post@" + people["_company_domain"].to_numpy(), local + "@" + other_domain)
    invalid_kinds = np.stack(
        [
            np.where(company, company_local, first) + "@",  # max@
            np.where(company, company_local, first)
            + " "
            + np.where(company, "gmbh", last)
            + "@"
            + domain,  # a b@c.de
            np.where(company, people["_company_domain"].to_numpy(), last + ".de"),  # mueller.de
            local + "@" + np.array([d.split(".")[0] for d in domain], dtype=object),  # no dot in the domain
            local + "@@" + domain,
        ]
    )
    invalid = invalid_kinds[g.integers(0, len(invalid_kinds), n), np.arange(n)]
    case = g.random(n)
    bounds = np.cumsum([EMPTY_EMAIL, INVALID_EMAIL, INVALID_THEN_VALID, TWO_VALID])
    email = np.select(
        [case < bounds[0], case < bounds[1], case < bounds[2], case < bounds[3]],
        ["", invalid, invalid + "; " + good, good + ", " + second],
        good,
    )
    phone = pick(g, pools.area_codes, n) + " " + as_text(g.integers(100_000, 99_999_999, n))
    mobile = pick(g, pools.mobile_prefixes, n) + " " + as_text(g.integers(1_000_000, 99_999_999, n))
    return people.assign(
        email=email,
        telefon=np.where(g.random(n) < 0.08, "", phone),
        mobil=np.where(company | (g.random(n) < 0.55), "", mobile),
    )


def new_phone_numbers(g: np.random.Generator, pools: Pools, n: int) -> np.ndarray:
    return pick(g, pools.area_codes, n) + " " + as_text(g.integers(100_000, 99_999_999, n))


def random_addresses(g: np.random.Generator, pools: Pools, n: int) -> dict[str, np.ndarray]:
    """Postal addresses anywhere in the pools (owners living elsewhere, tenants who moved away)."""
    town = g.integers(0, len(pools.plz), n)
    suffix = np.where(g.random(n) < 0.06, "a", "")
    return {
        "strasse": pick(g, pools.streets, n),
        "hausnummer": as_text(g.integers(1, 140, n)) + suffix,
        "plz": pools.plz[town],
        "ort": pools.ort[town],
        "land": np.full(n, "DE", dtype=object),
    }
