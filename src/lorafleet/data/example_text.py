"""Wording the generated example tasks share: people's names, and dates written the ways people write them.

A date is drawn as a `datetime.date` and written in one of `DATE_STYLES`; the task's answer holds it as
`YYYY-MM-DD`, so a model learns to normalise. The first four styles are the ones the support tickets
have always used (their files depend on that order); the rest add ordinals, weekdays and day-first
dotted dates for the newer tasks.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence

FIRST_NAMES = (
    "Maria", "James", "Aisha", "Kenji", "Olga", "Pedro", "Fatima", "Liam", "Chloe", "Ravi",
    "Ingrid", "Tomas", "Grace", "Yusuf", "Elena", "Marco", "Sofia", "Daniel", "Priya", "Lukas",
    "Hannah", "Omar", "Nina", "Victor", "Zoe", "Mateo", "Leila", "Arjun", "Freya", "Diego",
    "Amara", "Jonas", "Clara", "Hugo", "Mei", "Samuel", "Ana", "Felix", "Nadia", "Oscar",
    "Ines", "Theo", "Keiko", "Rafael", "Lena", "Emeka", "Julia", "Ahmed", "Sara",
)  # fmt: skip
LAST_NAMES = (
    "Lopez", "Smith", "Okafor", "Tanaka", "Petrova", "Alves", "Haddad", "Murphy", "Dubois", "Sharma",
    "Berg", "Novak", "Kim", "Demir", "Rossi", "Moretti", "Garcia", "Cohen", "Patel", "Weber",
    "Fischer", "Nasser", "Ivanova", "Costa", "Walker", "Silva", "Rahimi", "Mehta", "Larsen", "Ortiz",
    "Mensah", "Becker", "Laurent", "Martin", "Chen", "Adeyemi", "Santos", "Wagner", "Karimi", "Ramos",
    "Ferreira", "Yamamoto",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def full_name(rng: random.Random) -> str:
    """A first and last name, e.g. "Maria Lopez"."""
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def iso(date: datetime.date) -> str:
    """`date` as the answers hold it: YYYY-MM-DD."""
    return date.isoformat()


def ordinal(day: int) -> str:
    """1 → "1st", 2 → "2nd", 11 → "11th", 23 → "23rd"."""
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


DATE_STYLES: tuple[Callable[[datetime.date], str], ...] = (
    lambda d: d.isoformat(),  # 2025-03-05
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",  # March 5, 2025
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",  # 5 March 2025
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",  # Mar 5 2025
    lambda d: f"{ordinal(d.day)} {MONTHS[d.month - 1]} {d.year}",  # 5th March 2025
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",  # Wednesday, March 5, 2025
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 05.03.2025 (day first)
    lambda d: f"{MONTHS[d.month - 1][:3]} {ordinal(d.day)}, {d.year}",  # Mar 5th, 2025
)
TICKET_DATE_STYLES = DATE_STYLES[:4]


def written_date(
    rng: random.Random, date: datetime.date, styles: Sequence[Callable[[datetime.date], str]] = DATE_STYLES
) -> str:
    """`date` written in one of `styles`, drawn with one `rng.randrange(len(styles))`."""
    return styles[rng.randrange(len(styles))](date)


def random_date(rng: random.Random, first_year: int, last_year: int) -> datetime.date:
    """A date in `first_year`..`last_year`, days 1–28 so every month has it."""
    return datetime.date(rng.randint(first_year, last_year), rng.randint(1, 12), rng.randint(1, 28))
