"""A domain task: bank messages and transaction lines → {category, amount, risk_flag}.

Each row is `{"prompt": <instruction + message>, "completion": <JSON>}` with the fields

    category   one of CATEGORIES ("groceries", "travel", ...), implied by the merchant or payee, which
               the message names ("FRESHMART #2231"), never the category itself
    amount     the transaction's amount as a number (45.12, or 250 when whole), whichever way it is
               written; the account balance the message may also give is a distractor
    risk_flag  true when the message shows a sign of fraud (RISK_SIGNS: a new device, a card used
               abroad it has never been used in, several declined attempts, a first payment to a new
               payee), false when it shows only routine context (ROUTINE_NOTES) or none

Messages come as a bank's alert (SMS or e-mail wording) or as a statement line with a date, a
reference and the amount, in shuffled order. Generated from a fixed seed: the same files every time.
"""

from __future__ import annotations

import random
from typing import Any

from lorafleet.data.example_text import random_date, written_date
from lorafleet.data.task_generation import ExampleTask

FIELDS = ("category", "amount", "risk_flag")
INSTRUCTION = "Extract this bank transaction as JSON (category, amount, risk_flag)."

# Each category: merchants or payees as a statement shows them, and the usual amount range.
MERCHANTS: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "groceries": (("FRESHMART", "GREENGROCER CO", "DAILY BASKET", "VALUE FOODS"), (8, 240)),
    "dining": (("BISTRO LUNA", "SUSHI KOBO", "THE GOLDEN FORK", "PIZZA ROMA"), (6, 180)),
    "travel": (("SKYWAY AIRLINES", "RAILCONNECT", "HARBOR HOTEL", "CITYCAB"), (15, 1800)),
    "utilities": (("METRO POWER", "CLEARWATER UTILITY", "FASTNET BROADBAND"), (30, 320)),
    "fuel": (("QUICKFUEL", "PETRO PLUS", "HIGHWAY GAS"), (20, 140)),
    "subscription": (("STREAMFLIX", "CLOUDBOX STORAGE", "NEWSDAILY DIGITAL", "FITAPP PREMIUM"), (3, 60)),
    "rent": (("OAKRIDGE PROPERTY MGMT", "CITY LETTINGS LTD"), (600, 3200)),
    "cash withdrawal": (("ATM MAIN ST", "ATM CENTRAL STATION", "CASH MACHINE 0412"), (20, 500)),
}
CATEGORIES = tuple(MERCHANTS)
RISK_SIGNS = (
    "This card was used on a device we have not seen before.",
    "The card has never been used in {country} before.",
    "{n} declined attempts preceded this payment.",
    "This is the first payment to this payee.",
    "The purchase was made at {hour}:{minute:02d} AM from a new IP address.",
)
ROUTINE_NOTES = (
    "",
    "This matches your usual spending.",
    "Paid with your saved card.",
    "Recurring payment as scheduled.",
    "Contactless payment.",
)
COUNTRIES = ("Brazil", "Vietnam", "Romania", "Nigeria", "Peru", "Malaysia", "Ukraine")

_ALERTS = (
    "Alert: a {amount} purchase at {merchant} on your card ending {card} on {date}.",
    "You spent {amount} at {merchant} on {date} (card ending {card}).",
    "Card ending {card}: {amount} paid to {merchant}, {date}.",
    "We approved a payment of {amount} to {merchant} on {date}.",
    "Transaction notice: {merchant} charged {amount} on {date}.",
)
_STATEMENT = (
    "{date} | {merchant} | REF {ref} | -{amount}",
    "Date: {date}\nPayee: {merchant}\nReference: {ref}\nDebit: {amount}",
    "{date}  POS {merchant}  {amount}  ref {ref}",
)
_BALANCE = ("Available balance: {balance}.", "Your balance is now {balance}.", "Balance {balance}.", "")
_ASK = ("", "Not you? Reply NO or call us.", "Questions? Call the number on your card.")
_AMOUNT_STYLES = ("${c}", "{a} USD", "USD {c}", "$ {w}", "{c} dollars")


def make_transaction(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One bank message or statement line and its reference record."""
    category = rng.choice(CATEGORIES)
    merchants, (low, high) = MERCHANTS[category]
    merchant = rng.choice(merchants)
    if rng.random() < 0.5 and category not in ("rent", "cash withdrawal"):
        merchant = f"{merchant} #{rng.randint(100, 9999)}"
    amount = rng.randint(low, high) if rng.random() < 0.25 else round(rng.uniform(low, high), 2)
    amount = int(amount) if float(amount).is_integer() else amount
    risky = rng.random() < 0.35
    date = written_date(rng, random_date(rng, 2024, 2025))
    words = {"amount": _written_amount(rng, amount), "merchant": merchant, "date": date}
    if rng.random() < 0.6:
        lines = [rng.choice(_ALERTS).format(card=f"{rng.randint(0, 9999):04d}", **words)]
    else:
        lines = [rng.choice(_STATEMENT).format(ref=f"{rng.randint(10**7, 10**8 - 1)}", **words)]
    details = [_risk_sign(rng) if risky else rng.choice(ROUTINE_NOTES)]
    balance = round(rng.uniform(50, 25_000), 2)
    details.append(rng.choice(_BALANCE).format(balance=_written_amount(rng, balance)))
    rng.shuffle(details)
    lines += [*details, rng.choice(_ASK)]
    text = "\n".join(line for line in lines if line)
    return text, {"category": category, "amount": amount, "risk_flag": risky}


def _risk_sign(rng: random.Random) -> str:
    return rng.choice(RISK_SIGNS).format(
        country=rng.choice(COUNTRIES), n=rng.randint(2, 6), hour=rng.randint(1, 4), minute=rng.randrange(60)
    )


def _written_amount(rng: random.Random, amount: int | float) -> str:
    cents = f"{amount:.2f}"
    return rng.choice(_AMOUNT_STYLES).format(a=cents, c=f"{amount:,.2f}", w=cents.rstrip("0").rstrip("."))


TASK = ExampleTask(
    name="finance",
    description="bank alerts and statement lines → {category, amount, risk_flag}",
    instruction=INSTRUCTION,
    fields=FIELDS,
    generate=make_transaction,
)
