"""The bundled example task: customer-support tickets → a JSON record of their key fields.

Each row is `{"prompt": <instruction + ticket>, "completion": <JSON>}` with the fields

    type      one of TICKET_TYPES, implied by what the customer describes (rarely named outright)
    customer  the customer's full name, from the greeting, the signature or the body
    order_id  e.g. "QX-48213", or null when the ticket names none
    amount    the money at stake as a number (e.g. 45.99), or null
    date      the date the customer mentions, normalised to YYYY-MM-DD

Wording comes from many interchangeable openings, problem descriptions, detail phrasings,
requests and sign-offs, shuffled in order, so a model must read the ticket rather than memorise
templates. Everything is generated from a fixed seed: no download, the same files every time
(`task_generation.ExampleTask.write`; names and dates come from `example_text`).

`DRIFTED_TASK` is the same task after the traffic has drifted away from what `TASK` trains on: every
ticket is of a type `TASK` never produces (`DRIFTED_TYPES`: warranty claims, described but never named,
so a model that has not learned the type cannot copy it) and writes its date in a style `TASK` never uses
(`DRIFTED_DATE_STYLES`: day first, dotted, 05.03.2025). The instruction, the fields and everything
else are those of `TASK`, so a model trained on `TASK` can be scored on it as is.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lorafleet.data.example_text import (
    DATE_STYLES,
    TICKET_DATE_STYLES,
    full_name,
    iso,
    random_date,
    written_date,
)
from lorafleet.data.task_generation import ExampleTask

TICKET_TYPES = ("refund", "shipping", "billing", "technical", "account", "cancellation")
DRIFTED_TYPES = ("warranty",)  # never among TICKET_TYPES
DRIFTED_DATE_STYLES = (DATE_STYLES[6],)  # 05.03.2025, day first: never among TICKET_DATE_STYLES
FIELDS = ("type", "customer", "order_id", "amount", "date")

INSTRUCTION = "Extract this support ticket as JSON (type, customer, order_id, amount, date)."

_PRODUCTS = (
    "wireless headphones",
    "standing desk",
    "espresso machine",
    "yoga mat",
    "phone case",
    "winter jacket",
    "air purifier",
    "office chair",
    "smart watch",
    "backpack",
    "blender",
    "desk lamp",
    "running shoes",
    "tablet stand",
    "coffee grinder",
)
_SERVICES = ("premium plan", "family subscription", "cloud storage plan", "pro account", "monthly box")
# What each ticket type sounds like; {item} is a product, {service} a subscription.
_PROBLEMS: dict[str, tuple[str, ...]] = {
    "refund": (
        "the {item} I received is damaged and I would like my money back",
        "I returned the {item} two weeks ago and still have not been reimbursed",
        "the {item} does not match the description, please refund me",
        "I want to send back the {item} and get a full refund",
        "my {item} arrived broken and I expect the payment to be returned",
    ),
    "shipping": (
        "my {item} has not arrived yet and the tracking page has not changed",
        "the courier says the {item} was delivered but nothing is at my door",
        "the {item} was sent to the wrong address",
        "my parcel with the {item} seems stuck in transit",
        "delivery of the {item} is late and nobody tells me where it is",
    ),
    "billing": (
        "I was charged twice for my {service}",
        "there is a charge on my card for the {service} that I do not recognise",
        "the invoice for my {service} shows the wrong price",
        "my {service} was billed at the old rate after the discount",
        "I see an extra fee on my statement for the {service}",
    ),
    "technical": (
        "the app crashes every time I open my {service}",
        "the {item} will not connect to my phone",
        "I get an error message when I try to sync the {item}",
        "the firmware update bricked my {item}",
        "the website keeps logging me out of my {service}",
    ),
    "account": (
        "I cannot log in to my account even after resetting the password",
        "I need to change the email address on my account",
        "my account was locked after too many attempts",
        "someone else seems to have access to my account",
        "I would like to merge my two accounts into one",
    ),
    "cancellation": (
        "please cancel my {service} before the next renewal",
        "I want to end my {service} and stop all future payments",
        "I no longer need the {service}, cancel it please",
        "cancel my order for the {item} before it ships",
        "I have decided to terminate my {service}",
    ),
    "warranty": (  # described, never named: a model that has not learned the type cannot copy its name
        "my {item} stopped working after a few months although it is covered for two years",
        "the {item} has a manufacturing defect, please repair or replace it free of charge",
        "the {item} broke within the first year and the guarantee should cover that",
        "the motor of my {item} gave out after eight months of normal use, I expect a free repair",
        "I sent the faulty {item} in for the free repair it is owed and have heard nothing back",
    ),
}
_OPENINGS = (
    "Hello,",
    "Hi there,",
    "Dear support team,",
    "Good morning,",
    "Hey,",
    "To whom it may concern,",
    "",
)
_SELF_INTRO = ("My name is {name}.", "This is {name} writing.", "{name} here.", "I am {name}.")
_ORDER = (
    "My order number is {order}.",
    "Order {order}.",
    "The order is {order}.",
    "Reference: {order}.",
    "It was order {order}.",
    "(order #{order})",
)
_AMOUNT = (
    "It cost {amount}.",
    "I paid {amount}.",
    "The amount was {amount}.",
    "That is {amount} I would like sorted out.",
    "Total: {amount}.",
)
_DATE = (
    "This happened on {date}.",
    "The date was {date}.",
    "I ordered it on {date}.",
    "Since {date} nothing has changed.",
    "It started on {date}.",
    "On {date} I first noticed it.",
)
_ASKS = (
    "Please help.",
    "Can you look into this?",
    "I would appreciate a quick answer.",
    "Thanks in advance.",
    "What can you do about it?",
    "",
)
_SIGNOFFS = (
    "Best regards, {name}",
    "Thanks, {name}",
    "Cheers, {name}",
    "Sincerely, {name}",
    "- {name}",
    "{name}",
)


def make_ticket(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One ticket and its reference record."""
    return build_ticket(rng, TICKET_TYPES, TICKET_DATE_STYLES)


def make_drifted_ticket(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One ticket of a type and with a date style that `make_ticket` never produces, and its record."""
    return build_ticket(rng, DRIFTED_TYPES, DRIFTED_DATE_STYLES)


def build_ticket(
    rng: random.Random, types: Sequence[str], date_styles: Sequence[Callable[[datetime.date], str]]
) -> tuple[str, dict[str, Any]]:
    """A ticket of one of `types` (each has problem phrasings), its date written in one of `date_styles`."""
    kind = rng.choice(types)
    name = full_name(rng)
    problem = rng.choice(_PROBLEMS[kind]).format(item=rng.choice(_PRODUCTS), service=rng.choice(_SERVICES))
    order = None if rng.random() < 0.15 else f"{_letters(rng)}-{rng.randint(10000, 99999)}"
    amount = None if kind == "account" or rng.random() < 0.15 else round(rng.uniform(5, 900), 2)
    date = random_date(rng, 2023, 2025)
    details = [rng.choice(_DATE).format(date=written_date(rng, date, date_styles))]
    if order is not None:
        details.append(rng.choice(_ORDER).format(order=order))
    if amount is not None:
        details.append(rng.choice(_AMOUNT).format(amount=_written_amount(rng, amount)))
    rng.shuffle(details)
    body = problem[0].upper() + problem[1:] + "."
    introduce = rng.random() < 0.5
    parts = [rng.choice(_OPENINGS)]
    if introduce:
        parts.append(rng.choice(_SELF_INTRO).format(name=name))
    parts += [body, *details, rng.choice(_ASKS)]
    if not introduce or rng.random() < 0.3:
        parts.append(rng.choice(_SIGNOFFS).format(name=name))
    ticket = " ".join(part for part in parts if part)
    record = {"type": kind, "customer": name, "order_id": order, "amount": amount, "date": iso(date)}
    return ticket, record


TASK = ExampleTask(
    name="support_tickets",
    description="customer-support tickets → {type, customer, order_id, amount, date}",
    instruction=INSTRUCTION,
    fields=FIELDS,
    generate=make_ticket,
)
DRIFTED_TASK = ExampleTask(
    name="support_tickets_drifted",
    description="support tickets of an unseen type (warranty), dates as 05.03.2025 → the same record",
    instruction=INSTRUCTION,
    fields=FIELDS,
    generate=make_drifted_ticket,
)


def write_example_dataset(
    directory: Path, *, train_rows: int = 1000, test_rows: int = 200, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `test.jsonl` (held-out) into `directory`; same seed, same files."""
    return TASK.write(directory, train_rows=train_rows, test_rows=test_rows, seed=seed)


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))


def _written_amount(rng: random.Random, amount: float) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"${amount:.2f}"
    if style == 1:
        return f"{amount:.2f} USD"
    if style == 2:
        return f"USD {amount:.2f}"
    return f"${amount:,.2f}"
