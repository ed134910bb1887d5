"""A bundled example task: invoice emails and texts → {vendor, total, currency, due_date}.

Each row is `{"prompt": <instruction + invoice>, "completion": <JSON>}` with the fields

    vendor    the company that sent the invoice, exactly as written (e.g. "Northwind Supplies Ltd")
    total     the amount to pay as a number (1234.5, or 250 when whole), whichever way it is written:
              "$1,234.50", "1234.50 EUR", "€ 99", "GBP 12.00", "2,300 yen"
    currency  its ISO 4217 code (USD, EUR, GBP, JPY, CHF, CAD), or null when the text gives a bare number
    due_date  when payment is due, YYYY-MM-DD, or null when the invoice names no due date. It is
              written as a date (in one of several styles) or relative to the issue date that the
              invoice also states ("net 30", "within 14 days of the invoice date", "by the end of
              the month"), so the issue date is a distractor the model must not copy.

Invoices come as a letter or as `Key: value` lines, with an invoice number, the issue date, what
was billed and the payment details in shuffled order, and a greeting, a thank-you and a sign-off
drawn from interchangeable phrasings. Generated from a fixed seed: no download, the same files
every time.
"""

from __future__ import annotations

import calendar
import datetime
import random
import re
from pathlib import Path
from typing import Any

from lorafleet.data.example_text import FIRST_NAMES, MONTHS, iso, random_date, written_date
from lorafleet.data.task_generation import ExampleTask

FIELDS = ("vendor", "total", "currency", "due_date")
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD")
INSTRUCTION = "Extract this invoice as JSON (vendor, total, currency, due_date)."

_VENDOR_HEADS = (
    "Northwind", "Blue Harbor", "Greenleaf", "Summit", "Redwood", "Silverline", "Brightpath", "Oakridge",
    "Cedar & Stone", "Polaris", "Evergreen", "Riverbend", "Ironclad", "Sunrise", "Kestrel", "Maple Street",
    "Atlas", "Harborview", "Lumen", "Foxglove", "Granite", "Bluebird", "Copperfield", "Meridian",
)  # fmt: skip
_VENDOR_TRADES = (
    "Supplies", "Logistics", "Print Co", "Software", "Catering", "Cleaning Services", "Office Solutions",
    "Consulting", "Electric", "Freight", "Design Studio", "IT Services", "Plumbing", "Media",
)  # fmt: skip
_VENDOR_SUFFIXES = ("Ltd", "GmbH", "Inc", "LLC", "AG", "BV", "", "", "")
_BILLED = (
    "office supplies for {month}", "{n} hours of consulting", "freight of {n} pallets",
    "the annual software licence", "catering for the team offsite", "cleaning services in {month}",
    "{n} printed brochures",
    "network maintenance", "website redesign, phase {n}", "repair of the boiler", "{n} replacement laptops",
)  # fmt: skip

# How the amount is written, by currency; {a} is 1234.50, {c} 1,234.50, {w} 1234.5, {i} a whole number.
_AMOUNT_STYLES: dict[str, tuple[str, ...]] = {
    "USD": ("${c}", "{a} USD", "USD {c}", "US$ {a}", "{c} US dollars", "$ {w}"),
    "EUR": ("€{c}", "{w} EUR", "EUR {c}", "€ {a}", "{c} euros", "{a} €"),
    "GBP": ("£{c}", "{a} GBP", "GBP {c}", "£ {w}", "{c} pounds sterling"),
    "JPY": ("¥{i:,}", "{i} JPY", "JPY {i:,}", "{i:,} yen"),
    "CHF": ("CHF {c}", "{a} CHF", "Fr. {a}", "{c} Swiss francs"),
    "CAD": ("C${c}", "CA$ {a}", "{a} CAD", "CAD {c}", "{c} Canadian dollars"),
}
_BARE_AMOUNT = ("{c}", "{a}", "{w}")
_RELATIVE_TERMS = (7, 14, 30, 45, 60)

_HEADERS = (
    "Invoice {number} from {vendor}",
    "INVOICE {number}",
    "{vendor} - invoice no. {number}",
    "Subject: Invoice {number}",
    "Your invoice from {vendor} ({number})",
    "Billing notice {number}",
)
_GREETINGS = (
    "Dear customer,",
    "Hello {customer},",
    "Hi {customer},",
    "Dear {customer},",
    "Good afternoon,",
    "",
)
_FROM = (
    "This invoice is from {vendor}.",
    "{vendor} has issued the following invoice.",
    "Sent by {vendor}.",
    "Vendor: {vendor}.",
    "Billed by {vendor}.",
)
_ISSUED = (
    "Invoice date: {date}.",
    "Issued on {date}.",
    "Date of issue: {date}.",
    "This invoice was raised on {date}.",
)
_BILLED_LINE = ("Description: {billed}.", "This covers {billed}.", "For {billed}.", "Services: {billed}.")
_TOTAL = (
    "Total due: {amount}.",
    "Amount payable: {amount}.",
    "Please pay {amount}.",
    "Balance outstanding: {amount}.",
    "The total comes to {amount}.",
    "Grand total {amount}.",
)
_DUE_DATE = (
    "Due date: {date}.",
    "Payment is due by {date}.",
    "Please pay before {date}.",
    "Kindly settle this by {date}.",
    "Payable no later than {date}.",
)
_DUE_DAYS = (
    "Terms: net {n}.",
    "Payment is due within {n} days of the invoice date.",
    "Please pay within {n} days of issue.",
    "Payable {n} days after the invoice date.",
)
_DUE_MONTH_END = (
    "Payment is due by the end of the month of issue.",
    "Terms: due at the end of the invoice month.",
)
_NO_DUE = ("", "Thank you for paying at your earliest convenience.", "Payment terms as agreed.")
_PAYMENT = (
    "Pay by bank transfer quoting the invoice number.",
    "We accept card payments and bank transfers.",
    "Reference {number} with your payment.",
    "",
)
_SIGNOFFS = (
    "Kind regards, {vendor}",
    "Thank you for your business. {vendor}",
    "- {vendor} accounts",
    "Regards,\nAccounts team",
)


def make_invoice(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One invoice text and its reference record."""
    vendor = company_name(rng)
    currency = rng.choice(CURRENCIES)
    total = rng.randint(500, 900_000) if currency == "JPY" else _draw_total(rng)
    bare = rng.random() < 0.1
    amount = _written_amount(rng, total, None if bare else currency)
    issued = random_date(rng, 2024, 2026)
    due, due_line = _due(rng, issued)
    number = f"{rng.choice(('INV-', 'No. ', '#', 'INV'))}{rng.randint(1000, 99999)}"
    billed = rng.choice(_BILLED).format(month=MONTHS[rng.randint(1, 12) - 1], n=rng.randint(2, 40))
    customer = rng.choice(FIRST_NAMES)

    lines = [
        rng.choice(_ISSUED).format(date=written_date(rng, issued)),
        rng.choice(_BILLED_LINE).format(billed=billed),
    ]
    lines.append(rng.choice(_TOTAL).format(amount=amount))
    if due_line:
        lines.append(due_line)
    rng.shuffle(lines)
    header = rng.choice(_HEADERS).format(number=number, vendor=vendor)
    sign_off = rng.choice(_SIGNOFFS).format(vendor=vendor)
    if vendor not in header and vendor not in sign_off:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(_FROM).format(vendor=vendor))
    payment = rng.choice(_PAYMENT).format(number=number)
    if rng.random() < 0.5:  # a letter
        greeting = rng.choice(_GREETINGS).format(customer=customer)
        parts = [header, greeting, " ".join([*lines, payment]).strip(), sign_off]
    else:  # key: value lines, sentences cut to their labels where they have one
        parts = [header, *(_as_key_value(line) for line in lines), payment, sign_off]
    text = "\n".join(part for part in parts if part)
    record = {"vendor": vendor, "total": total, "currency": None if bare else currency, "due_date": due}
    return text, record


TASK = ExampleTask(
    name="invoices",
    description="invoice emails → {vendor, total, currency, due_date}",
    instruction=INSTRUCTION,
    fields=FIELDS,
    generate=make_invoice,
)


def write_example_dataset(
    directory: Path, *, train_rows: int = 1000, test_rows: int = 200, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `test.jsonl` (held-out) into `directory`; same seed, same files."""
    return TASK.write(directory, train_rows=train_rows, test_rows=test_rows, seed=seed)


def company_name(rng: random.Random) -> str:
    """A made-up company, e.g. "Northwind Supplies Ltd" (the suffix is drawn first, as it always was)."""
    suffix = rng.choice(_VENDOR_SUFFIXES)
    return " ".join(part for part in (rng.choice(_VENDOR_HEADS), rng.choice(_VENDOR_TRADES), suffix) if part)


def _draw_total(rng: random.Random) -> int | float:
    """Small and large bills, mostly with cents; a whole amount is an int (answers read 250, not 250.0)."""
    high = rng.choice((200, 2_000, 20_000))
    if rng.random() < 0.25:
        return rng.randint(10, high)
    total = round(rng.uniform(10, high), 2)
    return int(total) if total.is_integer() else total


def _written_amount(rng: random.Random, total: int | float, currency: str | None) -> str:
    styles = _BARE_AMOUNT if currency is None else _AMOUNT_STYLES[currency]
    style = rng.choice(styles)
    cents = f"{total:.2f}"
    return style.format(a=cents, c=f"{total:,.2f}", w=cents.rstrip("0").rstrip("."), i=int(total))


def _due(rng: random.Random, issued: datetime.date) -> tuple[str | None, str]:
    """The due date (or None) and the sentence that states it (or one that states none)."""
    kind = rng.random()
    if kind < 0.15:
        return None, rng.choice(_NO_DUE)
    if kind < 0.3:
        days = rng.choice(_RELATIVE_TERMS)
        return iso(issued + datetime.timedelta(days=days)), rng.choice(_DUE_DAYS).format(n=days)
    if kind < 0.35:
        last = calendar.monthrange(issued.year, issued.month)[1]
        return iso(issued.replace(day=last)), rng.choice(_DUE_MONTH_END)
    due = issued + datetime.timedelta(days=rng.randint(5, 75))
    return iso(due), rng.choice(_DUE_DATE).format(date=written_date(rng, due))


# Sentences that read as `Key: value` lines once renamed; a sentence starting `Key: ` loses its full stop.
_RENAMED = {
    "Issued on ": "Issued: ",
    "For ": "For: ",
    "Payment is due by ": "Due: ",
    "Payable no later than ": "Pay by: ",
}


def _as_key_value(line: str) -> str:
    """`Issued on 5 March 2025.` → `Issued: 5 March 2025`; sentences without a label stay as they are."""
    for start, label in _RENAMED.items():
        if line.startswith(start):
            line = label + line.removeprefix(start)
    return line.removesuffix(".") if re.match(r"[A-Z][a-z ]+: ", line) else line
