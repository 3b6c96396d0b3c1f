"""Generate tuneforge's bundled example dataset: support-ticket triage for a fictional smart-home company.

The task
--------
Northwind Home sells smart-home devices (cameras, hubs, thermostats, locks, alarms, sensors, plugs) and a
cloud subscription (Basic / Plus / Business). Each example is one customer ticket -- "Subject: ...", a blank
line, then the body as a customer would write it (greetings or none, polite / neutral / hurried / angry /
worried tone, typos now and then, order numbers, invoice ids, device models, names, dates) -- and the answer
is a compact JSON object with a queue and a priority, always in this one canonical form (``json.dumps``)::

    {"queue": "billing", "priority": "high"}

Records are OpenAI chat records, one JSON object per line::

    {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                  {"role": "user", "content": "Subject: ...\\n\\n<body>"},
                  {"role": "assistant", "content": "{\\"queue\\": \\"billing\\", \\"priority\\": \\"high\\"}"}]}

Labelling rules
---------------
Queue = the team that has to act on what the customer needs done, not the words that happen to appear:

* billing   -- charges, invoices, payment methods, the subscription (price, renewal, downgrade, cancel), refunds of
               subscription charges, a cancelled order's charge, and unrecognised card charges (card fraud).
* technical -- a device, the app, Wi-Fi, integrations or firmware misbehaving, plus how-to questions and
               feature requests about products the customer already owns.
* account   -- logging in, passwords, 2FA, email / name / phone changes, shared members, merging, deleting an
               account, exporting data, and anybody else getting in (account taken over, phishing, a previous
               owner or an ex who still controls the cameras or the lock).
* shipping  -- an order on its way: where is it, delays, address changes, missing / lost / stolen parcels,
               delivery fees and customs, and parcels that arrive damaged in transit (crushed, soaked box).
* returns   -- sending something back, exchanges, wrong item received, warranty replacements, dead-on-arrival
               units in an intact box, and money owed because of a return (refund missing or short, charged for
               an item that was returned, restocking fees).
* sales     -- anything before a purchase: which plan or device to buy, prices, discounts, quotes, bulk orders,
               resellers, partnerships, pre-purchase delivery and compatibility questions, plan upgrades a
               customer is only considering.

Tie-breakers: "I was charged for a return you never received" is returns (the return must be traced); "still
charged for the plan after I returned the camera" is billing (the subscription must be stopped); "the camera
stopped working, how do I fix it" is technical but "... I want a warranty replacement" is returns; "the box was
crushed" is shipping but "brand new, box perfect, won't power on" is returns. Safety problems go to the team
that must act (smoking device -> technical, a swollen battery the customer wants to send back -> returns, a
hot parcel -> shipping) and are always urgent.

Priority = impact on the customer plus time pressure -- never tone:

* urgent -- security compromise (account taken over, a stranger / former owner / ex can see cameras or open the
            lock, password typed into a phishing page), fraud (unrecognised charges, fake invoice emails),
            safety hazards (heat, smoke, sparks, swollen battery, no working smoke alarm, a lock that opens by
            itself), or a business whose whole setup is down.
* high   -- something is lost completely (device / hub / app / recording dead, locked out of the account,
            charged twice or a large wrong charge, service suspended, parcel lost or "delivered" but missing,
            dead on arrival, replacement also faulty, refund weeks overdue after repeated chasing), or the
            customer gives a concrete deadline (a trip, guests, move-in day, a budget meeting, a closing return
            window).
* normal -- a real problem with partial impact (intermittent, degraded, wrong amount, late parcel) and routine
            requests (a return, a cancellation, an email change, a quote without a deadline).
* low    -- questions, how-tos, suggestions and feature requests with nothing broken, or a minor problem where
            the customer says there is no rush.

Angry wording, "URGENT!!" in a subject, politeness and typos do not move priority by themselves.

How it is generated
-------------------
About 160 scenarios (22-35 per queue), each with subject and body templates that use inline alternatives
``[a|b|c]`` and slots ``{order}``, ``{cam}``, ``{plan}``, ``{amount}``, ``{day}`` ... A scenario has a base
priority; normal (and some low) scenarios can take a deadline sentence (-> high), and normal scenarios a
"no rush" sentence (-> low). Around that go openers, closers, tones, optional details and backstory, and
optional typos. Queue counts are balanced (n/6 each); priorities follow a per-queue skew (normal most common,
urgent rarest). No two tickets are identical.

The output is reproducible: only ``random.Random(seed)`` is used, so the same ``--n`` and ``--seed`` always give
byte-identical files. Standard library only; the file can be imported by path (``generate(n, seed)`` and
``SYSTEM_PROMPT``)::

    python examples/make_tickets.py [--n 600] [--seed 7] [--out examples/data/tickets.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

SYSTEM_PROMPT = (
    "You triage support tickets for Northwind Home. Reply with JSON only: "
    '{"queue": billing|technical|account|shipping|returns|sales, "priority": low|normal|high|urgent}.'
)

QUEUES = ("billing", "technical", "account", "shipping", "returns", "sales")
PRIORITIES = ("low", "normal", "high", "urgent")
DEFAULT_N = 600
DEFAULT_SEED = 7
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "tickets.jsonl"

# Share of each priority within a queue (low, normal, high, urgent). Sales has no urgent tickets.
PRIORITY_MIX = {
    "billing": (0.17, 0.41, 0.28, 0.14),
    "technical": (0.18, 0.40, 0.26, 0.16),
    "account": (0.20, 0.36, 0.26, 0.18),
    "shipping": (0.15, 0.44, 0.31, 0.10),
    "returns": (0.18, 0.46, 0.26, 0.10),
    "sales": (0.46, 0.40, 0.14, 0.00),
}

# ---------------------------------------------------------------------------------------------------------
# Slot values
# ---------------------------------------------------------------------------------------------------------

# fmt: off
PRICES = {
    "Northwind Cam 2": 79.99, "Cam 2": 79.99, "Cam 2 Outdoor": 119.99, "Cam Mini": 39.99,
    "DoorView doorbell": 149.99, "Hub Mini": 59.99, "Hub Pro": 129.99, "ThermoSense": 169.00,
    "ThermoSense Lite": 99.00, "SmartLock S1": 189.00, "SmartLock S1 Pro": 249.00, "SmokeGuard alarm": 79.00,
    "LeakSpot sensor": 29.99, "Plug One smart plug": 19.99, "Northwind Chime": 34.99,
}
PRODUCTS = list(PRICES)
CAMS = ["Northwind Cam 2", "Cam 2", "Cam 2 Outdoor", "Cam Mini"]
HUBS = ["Hub Mini", "Hub Pro"]
LOCKS = ["SmartLock S1", "SmartLock S1 Pro"]
THERMOS = ["ThermoSense", "ThermoSense Lite"]
SENSORS = ["LeakSpot sensor", "door sensor", "motion sensor", "window sensor", "LeakSpot leak sensor"]
HOT_DEVICES = ["Hub Mini", "Hub Pro", "Plug One smart plug", "ThermoSense", "Cam 2 Outdoor", "DoorView doorbell",
               "Northwind Chime", "Cam Mini", "Hub Pro base station"]
PLANS = {"Basic": "$3.99", "Plus": "$9.99", "Business": "$24.99"}
PLAN_PAIRS = [("Basic", "Plus"), ("Basic", "Business"), ("Plus", "Business")]

FIRST = ["Maria", "James", "Priya", "Chen", "Olu", "Sofia", "Liam", "Fatima", "Tom", "Aisha", "Diego", "Hannah",
         "Kenji", "Grace", "Mohammed", "Emma", "Raj", "Lucia", "Noah", "Zoe", "Pete", "Ingrid", "Kwame", "Yuki",
         "Dave", "Sarah", "Marco", "Anna", "Ben", "Chloe", "Tariq", "Megan", "Luis", "Helen", "Sam", "Nadia",
         "Greg", "Jess", "Omar", "Beth", "Ravi", "Claire", "Mike", "Elena", "Jonas", "Amara", "Rob", "Leila"]
LAST = ["Garcia", "Smith", "Patel", "Wei", "Adeyemi", "Rossi", "Murphy", "Khan", "Becker", "Okafor", "Lopez",
        "Novak", "Tanaka", "Kim", "Haddad", "Johnson", "Sharma", "Fernandez", "Brown", "Nguyen", "Larsen",
        "Mensah", "Sato", "Walsh", "Cohen", "Silva", "Kowalski", "O'Brien", "Dubois", "Andersson", "Reyes",
        "Hughes", "Ito", "Mahmoud", "Price", "Schultz"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "hotmail.com", "fastmail.com"]
CITIES = ["Portland", "Austin", "Leeds", "Toronto", "Denver", "Manchester", "Melbourne", "Dublin", "Phoenix",
          "Columbus", "Bristol", "Calgary", "Sacramento", "Raleigh", "Glasgow", "Madison", "Tucson", "Halifax",
          "Boise", "Cardiff", "Pittsburgh", "Auckland", "Richmond", "Omaha"]
COUNTRIES = ["Brazil", "Romania", "Singapore", "Germany", "Peru", "Vietnam", "Poland", "South Africa", "Turkey",
             "Indonesia", "Argentina", "the Netherlands"]
COMPANIES = ["Brightside Dental", "Oak & Pine Cafe", "Harbor Storage", "Maple Street Apartments",
             "Kestrel Fitness", "Lumen Coworking", "Greenleaf Pharmacy", "Redwood Property Group",
             "Bluebird Daycare", "Summit Auto Repair", "Cedar Lane Clinic", "Northgate Self Storage",
             "Copper Kettle Bakery", "Vista Realty", "Ironwood Logistics", "Sunrise Vet Clinic"]
BIZ_KINDS = ["dental clinic", "coffee shop", "hair salon", "warehouse", "bakery", "gym", "vet clinic",
             "small office", "bike shop", "print shop"]
CARRIERS = ["UPS", "FedEx", "USPS", "DHL"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAYS = ["Friday", "this Friday", "Saturday", "Monday", "Thursday", "Wednesday", "Tuesday", "the 15th",
        "the 30th", "Sunday", "this Saturday", "Monday morning"]
ROOMS = ["living room", "garage", "front porch", "back yard", "hallway", "nursery", "kitchen", "driveway",
         "basement", "side entrance", "office", "bedroom"]
ROUTERS = ["Netgear", "TP-Link Deco", "eero", "Google Nest Wifi", "ASUS", "Linksys", "BT Hub", "Xfinity"]
PHONES = ["Pixel 7", "iPhone 13", "Galaxy S23", "iPhone 15", "OnePlus 11", "iPhone SE", "Galaxy A54", "Pixel 8",
          "iPad"]
FEATURES = ["a dark mode", "a home screen widget", "Matter support", "custom alert sounds",
            "a way to see more than four cameras at once", "a timeline search by date", "Apple Watch support",
            "per-camera notification schedules", "an export button for clips", "a vacation mode for lights",
            "energy reports for the Plug One", "a privacy shutter schedule"]
PROMOS = ["WELCOME15", "SPRING20", "FRIENDS10", "NWHOLIDAY", "SAVE25", "NEWHOME"]
RETAILERS = ["Best Buy", "Amazon", "Costco", "Target", "Home Depot", "Walmart", "Currys"]
ERRORS = ["E-203", "E-401", "E-118", "E-509", "E-322", "error 0x1F", "E-77", "error 5012", "E-610"]
# fmt: on

# ---------------------------------------------------------------------------------------------------------
# Slots: filled lazily, once per ticket, so the same {order} / {cam} / {plan} is used throughout a ticket
# ---------------------------------------------------------------------------------------------------------


def _money(v: float) -> str:
    return f"${v:,.2f}"


def _slot(name: str, ctx: dict, rng: random.Random) -> str:  # noqa: C901 - one branch per slot is clearest
    if name in ctx:
        return ctx[name]
    c = rng.choice
    v: str
    if name == "first":
        v = c(FIRST)
    elif name == "first2":
        first = _slot("first", ctx, rng)
        v = c([f for f in FIRST if f != first])
    elif name == "last":
        v = c(LAST)
    elif name == "email":
        f, la = _slot("first", ctx, rng).lower(), _slot("last", ctx, rng).lower().replace("'", "")
        user = c(
            [
                f"{f}.{la}",
                f"{f}{la[0]}",
                f"{f[0]}{la}",
                f"{f}_{la}{rng.randint(1, 99)}",
                f"{f}{rng.randint(70, 99)}",
            ]
        )
        v = f"{user}@{c(DOMAINS)}"
    elif name in ("order", "order2"):
        v = f"NW-{rng.randint(10000, 99999)}"
    elif name == "invoice":
        v = f"INV-{rng.randint(100000, 999999)}"
    elif name == "tracking":
        carrier = _slot("carrier", ctx, rng)
        if carrier == "UPS":
            v = "1Z" + "".join(c("0123456789ABCDEFGHJKLMNPRSTVWXY") for _ in range(16))
        else:
            v = "".join(c("0123456789") for _ in range(12 if carrier != "USPS" else 22))
    elif name == "carrier":
        v = c(CARRIERS)
    elif name == "product":
        v = c(PRODUCTS)
    elif name == "cam":
        v = c(CAMS)
    elif name == "hub":
        v = c(HUBS)
    elif name == "lock":
        v = c(LOCKS)
    elif name == "thermo":
        v = c(THERMOS)
    elif name == "sensor":
        v = c(SENSORS)
    elif name == "hotdev":
        v = c(HOT_DEVICES)
    elif name == "amount":
        # a product's price when the ticket names a product, so the numbers hang together
        prod = ctx.get("product") or ctx.get("cam") or ctx.get("hub") or ctx.get("lock") or ctx.get("thermo")
        if prod is None:
            prod = _slot("product", ctx, rng)
        v = _money(PRICES.get(prod, 79.99))
    elif name == "partial":
        amt = float(_slot("amount", ctx, rng).strip("$").replace(",", ""))
        v = _money(round(amt * c([0.6, 0.7, 0.75, 0.8, 0.85]), 2))
    elif name == "big_amount":
        v = _money(c([649, 899, 1249.5, 1499, 1874.25, 2240, 2980, 3612.4, 4125]))
    elif name == "fee":
        v = c(["$15", "$20", "$25", "15%", "20%", "$12.50"])
    elif name == "shipfee":
        v = c(["$9.95", "$14.95", "$19.99", "$24.00", "$12.50"])
    elif name == "plan":
        v = c(list(PLANS))
    elif name == "price":
        v = PLANS[_slot("plan", ctx, rng)]
    elif name in ("plan_lo", "plan_hi"):
        lo, hi = c(PLAN_PAIRS)
        ctx["plan_lo"], ctx["plan_hi"] = lo, hi
        v = ctx[name]
    elif name == "last4":
        v = f"{rng.randint(0, 9999):04d}"
    elif name == "k":
        v = c(["three", "four", "five", "3", "4", "6"])
    elif name == "n":
        v = str(rng.randint(2, 6))
    elif name == "big_n":
        v = str(c([12, 15, 18, 20, 24, 30, 36, 40, 45, 60, 75, 80, 120, 150]))
    elif name == "days":
        v = str(rng.randint(3, 12))
    elif name == "weeks":
        v = str(rng.randint(3, 7))
    elif name == "months":
        v = str(rng.randint(4, 20))
    elif name == "years":
        v = c(["two", "three", "four", "five", "6", "7"])
    elif name == "year":
        v = c(["2022", "2023", "2024"])
    elif name == "month":
        v = c(MONTHS)
    elif name in ("date", "date2"):
        m, d = c(MONTHS), rng.randint(1, 28)
        suffix = "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
        v = c(
            [
                f"{m} {d}",
                f"{m[:3]} {d}",
                f"{d} {m}",
                f"{m} {d}{suffix}",
                f"the {d}{suffix}",
                f"{MONTHS.index(m) + 1}/{d}",
            ]
        )
    elif name == "day":
        v = c(DAYS)
    elif name == "city":
        v = c(CITIES)
    elif name == "country":
        v = c(COUNTRIES)
    elif name == "company":
        v = c(COMPANIES)
    elif name == "biz":
        v = c(BIZ_KINDS)
    elif name == "room":
        v = c(ROOMS)
    elif name == "router":
        v = c(ROUTERS)
    elif name == "phone":
        v = c(PHONES)
    elif name == "feature":
        v = c(FEATURES)
    elif name == "promo":
        v = c(PROMOS)
    elif name == "retailer":
        v = c(RETAILERS)
    elif name == "err":
        v = c(ERRORS)
    elif name == "fw":
        v = f"{rng.randint(3, 5)}.{rng.randint(0, 9)}.{rng.randint(0, 12)}"
    elif name == "appver":
        v = f"{rng.randint(6, 8)}.{rng.randint(0, 14)}.{rng.randint(0, 5)}"
    elif name == "pct":
        v = f"{c([12, 37, 48, 62, 75, 89, 93, 99])}%"
    elif name == "temp":
        v = c(["52", "54", "55", "57", "58", "12", "13"])  # F or C, as customers write it
    elif name == "followers":
        v = c(["20k", "45,000", "80k", "120k", "12,000"])
    elif name == "serial":
        v = f"SG{rng.randint(21, 23)}{rng.randint(10, 52):02d}-{rng.randint(1000, 9999)}"
    else:  # pragma: no cover - a typo in a template
        raise KeyError(f"unknown slot {{{name}}}")
    ctx[name] = v
    return v


_ALT = re.compile(r"\[([^\[\]]*)\]")
_SLOT = re.compile(r"\{([a-z_0-9]+)\}")


def render(template: str, ctx: dict, rng: random.Random) -> str:
    """Expand inline alternatives ``[a|b|c]`` (one picked at random), then fill ``{slots}`` from ``ctx``."""
    text = template
    while True:
        m = _ALT.search(text)
        if m is None:
            break
        text = text[: m.start()] + rng.choice(m.group(1).split("|")) + text[m.end() :]
    text = _SLOT.sub(lambda m: _slot(m.group(1), ctx, rng), text)
    return re.sub(r"  +", " ", text).strip()


# ---------------------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------------------


class Scenario:
    """One kind of ticket. `base` is its intrinsic priority; `esc` names the deadline sentences that can raise it
    to high (False: none); `relax` says whether a "no rush" sentence can lower a normal one to low; `calm` marks
    routine requests (a return, a cancellation), which are never written in an angry tone; `details` allows the
    queue's generic detail sentences (off for urgent tickets and where they would contradict the body)."""

    __slots__ = ("queue", "base", "subjects", "bodies", "esc", "relax", "calm", "details", "idx")

    def __init__(self, queue, base, subjects, bodies, esc, relax, calm, details, idx):
        self.queue, self.base, self.subjects, self.bodies = queue, base, subjects, bodies
        self.esc, self.relax, self.calm, self.details, self.idx = esc, relax, calm, details, idx


SCENARIOS: list[Scenario] = []
# Which DEADLINE list a scenario uses unless it names its own.
DEFAULT_DEADLINE = {
    "billing": "billing_money",
    "technical": "technical",
    "account": "account",
    "shipping": "shipping",
    "returns": "returns_money",
    "sales": "sales",
}


def S(
    queue: str,
    base: str,
    subjects: list[str],
    bodies: list[str],
    esc=None,
    relax=None,
    calm=False,
    details=True,
) -> None:
    if esc is None:
        esc = DEFAULT_DEADLINE[queue] if base == "normal" else False
    if relax is None:
        relax = base == "normal"
    calm = calm or base == "low"
    details = details and base in ("normal", "high")
    SCENARIOS.append(Scenario(queue, base, subjects, bodies, esc, relax, calm, details, len(SCENARIOS)))


# fmt: off
# ---- billing ----------------------------------------------------------------------------------------------
B = "billing"
S(B, "normal", ["Wrong amount on my bill", "Why was I charged {amount}?", "Subscription price went up?",
                "{plan} plan charge looks wrong"],
  ["I'm on the {plan} plan, which is {price} a month, but this month I was charged {amount}. [Did the price change?|Can you check what happened?|Nobody told me about a price change.]",
   "My [card|bank statement] shows {amount} from Northwind for the {plan} subscription. It's [normally|always been] {price}. [Please explain or fix it.|What's going on?|Can you look into it?]"],
  esc="billing_money")
S(B, "normal", ["Discount code not applied", "Promo code {promo} didn't work", "Missing discount on invoice {invoice}"],
  ["I [signed up for|switched to|renewed] {plan} using the code {promo}, but invoice {invoice} shows the full price. Can you apply the discount?",
   "The {promo} code was accepted at checkout but I [got charged|paid] full price anyway. Could you refund the difference?"],
  esc="billing_money")
S(B, "normal", ["Can't update my card", "Payment method keeps getting declined", "Problem adding new card"],
  ["I'm trying to replace my expired card [in the app|on the website] but it keeps saying '[Payment method declined|Card could not be verified]'. The card works everywhere else.",
   "Every time I enter my new card ending in {last4} under [Billing|Account > Payment] I get an error and it won't save. How else can I pay?"],
  esc="billing_service")
S(B, "normal", ["Charged after I cancelled", "Still being billed after cancellation", "Cancelled but charged again"],
  ["I cancelled my {plan} subscription on {date} and got a confirmation email, but I was charged {price} again on {date2}. Please refund it.",
   "I cancelled the {plan} plan [last month|a few weeks ago] and you still took {price} from my card. I'd like that refunded and no more charges please."],
  esc="billing_money")
S(B, "normal", ["Sales tax on our invoice", "We're tax exempt - invoice {invoice}"],
  ["We're a registered nonprofit and shouldn't be charged sales tax, but invoice {invoice} includes tax. I can send our exemption certificate again.",
   "Invoice {invoice} for our Business plan has tax added even though we sent the exemption form in {month}. Can you reissue it without tax?"],
  esc="billing_invoice")
S(B, "normal", ["Invoice details wrong", "Invoice {invoice} needs correcting", "Billing details on our invoices"],
  ["Our invoices still show my personal name instead of {company}. Can you update the billing details and reissue invoice {invoice}?",
   "Please add our VAT number to invoice {invoice} - our finance team [can't|won't] process it without it."],
  esc="billing_invoice")
S(B, "normal", ["Annual plan charge question", "Switched to yearly, billing seems off"],
  ["I switched from monthly to annual billing on {date} and was charged the full year with no credit for the month I'd already paid. That doesn't seem right.",
   "Moved my {plan} plan to yearly billing and the charge didn't take off the [month|two weeks] I had already paid for. Can you credit that?"],
  esc="billing_money")
S(B, "normal", ["Cancel subscription", "Please cancel my {plan} plan", "Stop my subscription"],
  ["Please cancel my {plan} subscription at the end of the current billing period. [We're moving and won't need the cameras anymore.|We've stopped using the cameras.|Money's tight right now.]",
   "I want to cancel the cloud plan but I can't find the option anywhere in the app. Can you cancel it for me? Account email {email}."],
  esc=["Please make sure it's cancelled before it renews on {day}.", "It renews on {day} and I don't want to be charged again."], calm=True)
S(B, "normal", ["Still billed for {plan_hi} after downgrade", "Downgrade not reflected on bill"],
  ["I downgraded from {plan_hi} to {plan_lo} on {date}, but my latest invoice is still for {plan_hi}. Can you fix it and refund the difference?",
   "We moved to the {plan_lo} plan last month and we're still being billed the {plan_hi} price. [Please correct it.|Please sort this out.]"],
  esc="billing_money")
S(B, "normal", ["Payment failed email", "My payment didn't go through", "Re: Action needed - payment failed"],
  ["I got an email saying the payment for my {plan} plan failed. I've added a new card now - can you retry the charge so my recordings don't get paused?",
   "Your system says my last payment failed but there's plenty of money in the account. Could you try the card again?"],
  esc="billing_service", relax=False)
S(B, "normal", ["Free trial charged", "Refund for trial conversion?", "Didn't mean to subscribe"],
  ["My free trial of {plan} turned into a paid subscription and I was charged {price}. I forgot to cancel and haven't used it [at all|since]. Could I get a refund?",
   "I was charged {price} when the {plan} trial ended. I meant to cancel before then. Is a refund possible?"],
  esc="billing_money", calm=True)
S(B, "normal", ["Charged in USD instead of CAD", "Wrong currency on my bill"],
  ["I'm in [Toronto|Calgary|Halifax|Ottawa] and my subscription is supposed to be billed in CAD, but this month's charge was in USD and my bank added a foreign transaction fee.",
   "Why am I suddenly being charged in US dollars? I'm a Canadian customer and it's always been CAD."],
  esc="billing_money")
S(B, "normal", ["Still paying for a camera I returned", "Subscription after return"],
  ["I returned my {cam} in {month} and got the refund for the camera, but I'm still paying {price}/month for the {plan} plan that was only for it. Please stop the subscription and refund the last charge.",
   "The camera went back weeks ago (return was processed fine) but the monthly {plan} charge keeps coming. I don't have any devices left."],
  esc="billing_money")
S(B, "normal", ["Charged for a cancelled order", "Order {order} cancelled but money taken"],
  ["I cancelled order {order} an hour after placing it and got a cancellation email, but the {amount} was still taken from my card.",
   "Order {order} was cancelled before it shipped, yet my card was charged {amount}. When will that be reversed?"],
  esc="billing_money")
S(B, "normal", ["Invoices going to old email", "Change billing email"],
  ["All our invoices go to my old work address. Please send them to {email} from now on.",
   "Can you change the email that receives our invoices? The person who used to get them left {company}."],
  esc="billing_invoice", calm=True)
S(B, "low", ["When does my plan renew?", "Renewal date question", "Quick billing question"],
  ["When exactly does my annual {plan} plan renew? I'd like to [put a reminder in my calendar|make sure there's money on the card].",
   "Could you tell me the next billing date for my account? I can't see it in the app."])
S(B, "low", ["Payment options", "Other ways to pay?", "Question about paying"],
  ["Is it possible to pay for my subscription with PayPal instead of a credit card?",
   "For our Business plan, can we switch to paying by bank transfer against an invoice rather than by card?"])
S(B, "low", ["What is this charge on my statement?", "Charge on my statement - is it you?"],
  ["I see a charge labelled 'NW*HOME SUBSCR' for {price} on my statement. I assume that's my {plan} plan but just want to confirm.",
   "Is 'NORTHWIND HOME 800' on my bank statement you? It's {price}, so probably my subscription, just checking."])
S(B, "low", ["Invoices for {year}", "Copies of past invoices", "Need all my receipts"],
  ["Could you send me copies of all my invoices from {year}? I need them for my [taxes|records|home office expenses].",
   "Is there a way to download all my old invoices in one go? I need them for [my accountant|our expense report]."],
  esc=["My accountant needs them by {day}.", "The tax filing deadline is {day}, so I need them before then."])
S(B, "low", ["Suggestion about invoices", "Invoice emails", "Small billing suggestion"],
  ["Would it be possible to get invoices emailed as PDFs automatically each month? Right now I have to log in and download them.",
   "Small suggestion - it would help if the monthly receipt email included the invoice number and VAT breakdown."])
S(B, "low", ["Annual vs monthly price", "Does yearly billing save money?"],
  ["I'm on monthly {plan}. How much would I save by switching to annual billing, and do I lose anything?",
   "If I switch my subscription to yearly, is the discount applied right away or at the next renewal?"])
S(B, "high", ["Charged twice for order {order}", "Double charge!!", "Duplicate payment on my card"],
  ["I was charged twice for order {order} - two charges of {amount} on {date}. I only placed one order. Please refund the duplicate.",
   "My bank shows {amount} taken twice for the same order ({order}). That's money I need back - please fix this."])
S(B, "high", ["Multiple charges this month", "Charged {k} times for the subscription"],
  ["You've charged my card {price} {k} times this month for the same {plan} plan. Please refund the extra charges.",
   "There are {k} separate charges of {price} for my {plan} subscription this month. Something is wrong with your billing."])
S(B, "high", ["Billed {big_amount}??", "Huge charge on our account", "Invoice {invoice} is wrong"],
  ["We're on the {plan} plan but invoice {invoice} charged us {big_amount}. That came straight out of our business account. Please reverse it.",
   "Your latest invoice {invoice} is for {big_amount}. We normally pay under a hundred a month. This needs to be reversed."])
S(B, "high", ["Cameras stopped recording - payment issue?", "Account suspended but I paid", "Subscription suspended by mistake"],
  ["My cameras stopped recording and the app says my subscription is suspended for non-payment. The {price} was taken from my account on {date} - I have the bank statement. Please reactivate it.",
   "You suspended my {plan} plan for a failed payment, but the payment went through. Now none of my cameras record anything."])
S(B, "high", ["Charged again instead of refunded", "Your charge overdrew my account"],
  ["The {amount} you took on {date} was supposed to be refunded last week and instead you charged it again. My account is now overdrawn.",
   "Instead of the refund I was promised, another {amount} came out of my account. I'm now in my overdraft because of this."])
S(B, "urgent", ["Charges I didn't make", "Fraudulent charges from Northwind", "Unauthorized transactions on my card"],
  ["There are {k} charges from Northwind on my credit card since {date} that I did not make, about {amount} each. I don't even have an account with you. [Someone is using my card.|I think my card details were stolen.]",
   "I just noticed {k} purchases from your store on my card ending {last4} that aren't mine. Please stop any orders and tell me what was bought.",
   "A new charge from Northwind is appearing on my card every few minutes - {k} so far today - and I haven't bought anything. Please block it.",
   "My card was charged {big_amount} by Northwind for an order of {big_n} cameras going to an address in {city} I've never heard of. I did not place this order."])
S(B, "urgent", ["Scam call about a refund?", "Fake Northwind billing call", "Gave my card number to a scammer"],
  ["Someone called saying they were from Northwind billing and needed my card number to refund an overcharge. I gave it to them and now there's a {amount} charge I don't recognise.",
   "I got a call from 'Northwind accounts' asking me to confirm my card details for a refund on my {plan} plan. I did, then realised it was probably a scam. Please flag my payment details and stop any charges."])
S(B, "urgent", ["Is this invoice email real?", "Suspicious email about payment", "Bank details change - genuine?"],
  ["We received an email claiming to be from Northwind billing with new bank details for paying invoice {invoice} ({big_amount}). Our accounts team nearly paid it. Can you confirm whether this is genuine?",
   "Someone sent our office an invoice for {big_amount} on Northwind letterhead asking us to pay a new account number. We've never had an invoice that size. Is it a scam?"])

# ---- technical --------------------------------------------------------------------------------------------
T = "technical"
S(T, "normal", ["{cam} keeps going offline", "Camera disconnecting", "Camera offline again"],
  ["My {cam} in the {room} goes offline several times a day and comes back on its own after [a few minutes|an hour or so]. The Wi-Fi signal there is fine.",
   "Since [last week|the last update] the {cam} drops off the app randomly. Restarting it fixes it for a day or so."])
S(T, "normal", ["Motion alerts delayed", "Notifications arrive late", "Alerts way too late"],
  ["Motion alerts from my {cam} arrive [30 seconds|a minute|2-3 minutes] after the event, so by the time I open the app the person is gone.",
   "The DoorView notifications come through way too late - the courier has left before my phone even buzzes."])
S(T, "normal", ["Night vision blurry", "Camera picture bad at night", "Fuzzy image at night"],
  ["Night vision on my {cam} has become really blurry and washed out. Daytime footage is fine. I've cleaned the lens.",
   "At night the {cam} picture is just a grey blur with a white haze in the middle. During the day it's perfect."])
S(T, "normal", ["App crashes", "Live view crashes the app", "App keeps closing"],
  ["The Northwind app crashes every time I open live view on my {phone}. Other screens work. I've reinstalled it twice.",
   "Since the latest app update, tapping on any camera closes the app immediately. Phone is a {phone}, app version {appver}."])
S(T, "normal", ["Firmware update stuck", "Update stuck at {pct}", "{hub} stuck updating"],
  ["My {hub} has been stuck at {pct} on the firmware update for [two hours|most of the day|since last night]. The devices still work but the app keeps showing 'updating'.",
   "The firmware update on the {hub} never finishes - it sits at {pct} and then starts again. Should I unplug it?"])
S(T, "normal", ["Thermostat reading wrong temperature", "{thermo} off by several degrees"],
  ["The {thermo} says it's 72 in the living room but a separate thermometer shows [66|67|68], so the heating cuts off early.",
   "My {thermo} reads about [4|5|6] degrees higher than the actual room temperature. It's in a hallway, no sun on it."])
S(T, "normal", ["Lock batteries dying fast", "{lock} battery drain"],
  ["I'm replacing the batteries in my {lock} every [two weeks|10 days] now. It used to last months. Nothing changed on our side.",
   "The {lock} went from 100% to 'low battery' in under a fortnight. Fresh brand-name batteries each time."])
S(T, "normal", ["Voice assistant not working", "Smart speaker integration broken", "Alexa / Google Home problem"],
  ["Alexa suddenly says my {product} is unresponsive, even though it works in the Northwind app. I've tried disabling and re-enabling the skill.",
   "The Google Home link keeps failing with '[Could not reach Northwind|Something went wrong]'. Everything works fine in your app."])
S(T, "normal", ["Can't connect new {product} to Wi-Fi", "Setup fails at Wi-Fi step", "Setup problem"],
  ["Setting up a new {product} and it fails at the Wi-Fi step every time with {err}. Router is {router}.",
   "The {product} won't join my Wi-Fi during setup. I've tried four times and the password is definitely correct."])
S(T, "normal", ["Not getting notifications", "Push notifications stopped"],
  ["I'm not getting any push notifications from the app anymore even though they're turned on in settings. Using a {phone}.",
   "Notifications stopped working on my {phone} after the last update. The events show up in the app history, I just don't get alerted."])
S(T, "normal", ["Chime doesn't ring", "Doorbell chime silent"],
  ["When someone presses the DoorView doorbell the app notifies me but the Northwind Chime doesn't ring anymore. It used to.",
   "Our indoor chime stopped ringing when the doorbell is pressed. It's plugged in, light is on, and the app shows it as connected."])
S(T, "normal", ["Missing recordings", "Gaps in cloud recordings", "Clips not saving"],
  ["There are gaps in my cloud recordings for the {cam} - for example nothing between 2 and 5pm on {date}, even though there was motion.",
   "Some clips from the {cam} just aren't saved. The alert comes through but when I tap it it says 'clip unavailable'."])
S(T, "normal", ["Glow bulbs flickering", "Lights flicker when dimmed"],
  ["My Glow bulbs flicker whenever they're dimmed below about 30%. At full brightness they're fine.",
   "Two of the Glow bulbs in the {room} flicker every few seconds since the last firmware update."])
S(T, "normal", ["Sensor keeps disconnecting", "{sensor} showing offline"],
  ["The {sensor} in the {room} keeps showing as offline in the app, then reconnects a few hours later. Battery is new.",
   "My {sensor} drops off the {hub} every night and comes back in the morning. It's about 5 metres from the hub."])
S(T, "normal", ["Error {err} in the app", "Getting error {err}"],
  ["Whenever I try to change a schedule the app shows '{err}: request failed'. Is that on your end?",
   "I keep getting {err} when I open the {thermo} settings in the app. Everything else seems to work."])
S(T, "normal", ["Away mode doesn't trigger", "Geofencing not working"],
  ["Away mode is supposed to switch on when we all leave, but it never triggers anymore. I have to turn it on manually every day.",
   "Geofencing stopped working - the lights don't turn off when we leave and the cameras don't arm. Location permission is set to 'always'."])
S(T, "normal", ["Two-way audio problem", "Audio issue on my camera"],
  ["Two-way talk on the {cam} stopped working. I can see the picture but there's no sound either way.",
   "The speaker on the DoorView crackles so badly that visitors can't understand me."])
S(T, "normal", ["Plug One keeps switching off", "Smart plug turning off randomly"],
  ["My Plug One smart plug switches off by itself a few times a week. No schedules set, and the app shows nothing in the history.",
   "The Plug One in the {room} turns off at random times, usually overnight. Turning it back on in the app works."])
S(T, "high", ["{cam} won't turn on", "Camera completely dead", "No power on camera"],
  ["My {cam} won't power on at all anymore - no light, nothing. It was working fine until {date}. I've tried a different cable and outlet.",
   "The {cam} in the {room} is completely dead since yesterday. No status light, not in the app, nothing."])
S(T, "high", ["Hub offline - nothing works", "All devices unavailable", "{hub} down"],
  ["Our {hub} went offline this morning and now every device in the house shows 'unavailable'. Lights, lock, thermostat - nothing responds in the app.",
   "Since the update last night the {hub} has a solid red light and none of our {n} devices can be controlled."])
S(T, "high", ["Heating won't come on", "{thermo} not turning heat on", "No heat - thermostat problem"],
  ["The {thermo} won't turn the heating on anymore. It's {temp} degrees in the house and the display just says '[Idle|Waiting]'.",
   "Our {thermo} stopped calling for heat overnight. The boiler works if I bypass it, but with the thermostat connected we have no heating at all."])
S(T, "high", ["Lock won't open", "{lock} not responding", "Can't unlock front door"],
  ["My {lock} won't respond to the app or the keypad. We had to get in through the back door. The batteries are new.",
   "The {lock} shows 'jammed' and won't unlock from the app, keypad or fingerprint. Only the physical key works and I'm not always carrying it."])
S(T, "high", ["App won't open at all", "Can't get past loading screen"],
  ["Since this morning the Northwind app is stuck on the loading screen on both our phones, so we can't see or control anything.",
   "The app just shows a spinning wheel and then '{err}'. I can't get into any of my devices. Reinstalling didn't help."])
S(T, "high", ["Recording stopped completely", "No recordings since {date}"],
  ["None of my cameras have recorded anything to the cloud since {date}. The subscription is active and live view works.",
   "Cloud recording has stopped for all {n} of our cameras. The timeline is empty since {date}."])
S(T, "urgent", ["{hotdev} overheating", "{hotdev} - safety problem", "Device overheating!!", "Is my {hotdev} safe?"],
  ["My {hotdev} is extremely hot to the touch and there's a burning plastic smell. I've unplugged it. Is it safe to keep in the house?",
   "There was smoke coming out of the {hotdev} in the {room} tonight. I unplugged it right away. [What do I do?|Please advise.|Is this a known problem?]",
   "The {hotdev} is making a crackling noise and the case has gone brown and soft on one side."])
S(T, "urgent", ["All cameras offline at our store", "Security system down", "Every camera down at {company}"],
  ["All {big_n} cameras at {company} have been offline since [this morning|6am|last night]. We have no security coverage at the [shop|warehouse|office] right now.",
   "Our entire Business setup is down - {big_n} cameras and the Hub Pro at our {city} location all show offline. We're open to customers with no recording."])
S(T, "urgent", ["SmokeGuard not working", "Smoke alarm dead", "SmokeGuard sensor fault"],
  ["Our SmokeGuard alarm shows 'sensor fault' and the test button does nothing, so right now we have no working smoke alarm in the [house|kids' room|upstairs].",
   "The SmokeGuard in the kitchen stopped beeping on test and the app says it's disconnected. It's our only smoke alarm on that floor."])
S(T, "urgent", ["Lock opening on its own", "{lock} unlocked itself overnight"],
  ["Our {lock} unlocked itself [twice|three times] last night while we were asleep. The activity log shows no user. We don't feel safe.",
   "I came home to find the front door unlocked and the {lock} log says 'unlocked' at 3am with no user. This has happened before."])
S(T, "urgent", ["Office locks all offline", "Staff can't get into the building"],
  ["Every SmartLock at our office went offline after this morning's update and staff can't get in. The whole team is waiting outside.",
   "All door locks at {company} stopped responding. The Hub Pro shows offline and none of our staff codes work."])
S(T, "low", ["Feature request", "Suggestion for the app", "Idea: {feature}"],
  ["Would love to see {feature} in the Northwind app at some point. [Otherwise great app.|Keep up the good work.|Thanks for listening.]",
   "Any plans for {feature}? It's the one thing I miss compared to my old system."])
S(T, "low", ["How do I set a schedule?", "Question about schedules", "Automation question"],
  ["How do I set the {thermo} to a different temperature on weekends? I couldn't find it in the app.",
   "Is there a way to turn off motion alerts automatically when I'm home and back on when I leave?"])
S(T, "low", ["Using my hub with other platforms", "HomeKit / Home Assistant?", "Integration question"],
  ["I already have a {hub}. Is there any way to use it with Apple HomeKit, or is that planned?",
   "Can the {hub} I own be added to Home Assistant? Just exploring options."])
S(T, "low", ["Changing the doorbell sound", "Chime tone"],
  ["Is it possible to change the chime sound on the DoorView? The default one is a bit loud for us.",
   "How do I make the Northwind Chime quieter at night? It wakes the baby."])
S(T, "low", ["What changed in firmware {fw}?", "Release notes?"],
  ["My {hub} updated to {fw} last night. Where can I find what changed in that version?",
   "Is there a changelog for the {cam} firmware? Mine is on {fw} and I'm curious what's new."])
S(T, "low", ["Best place to mount the camera?", "Camera placement advice"],
  ["What height do you recommend for mounting the {cam} so it catches faces at the front door?",
   "Any tips for placing the {cam} so it doesn't keep triggering on passing cars?"])

# ---- account ----------------------------------------------------------------------------------------------
A = "account"
S(A, "normal", ["Change email on account", "Update my login email", "New email address"],
  ["I'd like to change the email on my account from {email} to my new address. The app won't let me edit it.",
   "How do I change my login email? I'm leaving my job and my account is under my work address."],
  esc=["My work email is shut off on {day}, so this has to happen before then.",
       "I lose access to the old inbox on {day}."], calm=True, details=False)
S(A, "normal", ["Delete my account", "Please close my account", "Account deletion request"],
  ["Please delete my Northwind account ({email}) and all my data. I've sold the house and don't use your products anymore.",
   "I want my account and all recorded footage permanently deleted. How long does that take?"],
  esc=["We hand over the house on {day} and I want everything gone before then."], calm=True)
S(A, "normal", ["Data export request", "Copy of my personal data", "Download all my clips"],
  ["Under GDPR I'd like a copy of all the personal data you hold about me. Account email is {email}.",
   "Is there a way to export all my saved clips and account data at once? Clicking through them one by one is impossible."],
  esc=["I need it by {day} for a court case.", "My lawyer needs the footage by {day}."], calm=True)
S(A, "normal", ["No verification email", "Can't verify my account"],
  ["I just created an account but the verification email never arrives. I've checked spam. I can't add my {product} until I verify.",
   "Signed up with {email} and the 'verify your email' message never came, so setup is stuck."])
S(A, "normal", ["App keeps logging me out", "Have to log in every time"],
  ["The app logs me out every time I close it, so I have to enter my password and 2FA code ten times a day.",
   "I keep getting 'session expired' and have to sign in again, several times a day on my {phone}."])
S(A, "normal", ["Remove devices for new owner", "Selling my house - transfer devices"],
  ["We're selling our house and leaving the {lock} and {thermo} behind. Please remove them from my account so the buyer can set them up.",
   "I need to hand over the {hub} and everything paired to it to the new owners. How do I release them from my account?"],
  esc=["Closing is on {day}.", "The new owners move in on {day}."], calm=True)
S(A, "normal", ["Merge two accounts", "I have two accounts"],
  ["I accidentally made two accounts ({email} and another one). My cameras are split between them. Can you merge them?",
   "My partner and I each set up an account and now half the devices are on each. Can they be combined into one home?"], calm=True)
S(A, "normal", ["Invite link not working", "Can't share access with my partner"],
  ["I invited my partner {first2} to our home but the invite link says 'expired' every time they open it.",
   "I sent a member invite to {first2} three times and it never shows up for them."],
  esc=["They're looking after the house from {day} while we're away."])
S(A, "normal", ["Update phone number for 2FA", "2FA codes going to old number"],
  ["My 2FA codes still go to my old number ending {last4}. I can log in with backup codes for now but I need to change the number.",
   "I changed phone numbers and the verification texts go to the old one. I've only got two backup codes left."],
  esc=["The old number gets disconnected on {day}."], relax=False, calm=True)
S(A, "normal", ["Can't log in on the website", "Web login not working"],
  ["I can log in fine on the app, but the website keeps saying 'incorrect password' with the same details.",
   "Logging in on my laptop gives {err}, the phone app works. I need the website for downloading clips."])
S(A, "normal", ["Can't remove a member", "Remove button doesn't work"],
  ["My daughter has moved out for university and I want to take her off our home, but the remove button doesn't do anything. I'm the owner.",
   "I'm trying to remove my mother-in-law from our home now that she's moved into her own place. The app says 'something went wrong' every time."])
S(A, "high", ["Locked out of my account", "Account locked", "Can't log in!!"],
  ["My account got locked after too many password attempts and the unlock email never arrives. I can't see my cameras at all.",
   "It says 'account temporarily locked' and it's been [two days|over 24 hours]. I can't control any of my devices."])
S(A, "high", ["Lost phone, can't get 2FA code", "Locked out - no 2FA"],
  ["My phone [broke|got reset|fell in the lake] and I can't get the two-factor code, so I'm completely locked out of my account. I don't have the backup codes.",
   "New phone, old one wiped, and now the app wants a 2FA code I can't get. I can't get into my account at all."])
S(A, "high", ["Account disabled?", "Why was my account suspended"],
  ["I tried logging in today and it says my account has been disabled. I haven't done anything wrong and now I can't access anything.",
   "Got 'this account has been deactivated' when logging in. I pay for {plan} every month. Why?"])
S(A, "high", ["Password reset not working", "Can't reset my password", "Locked out - password reset"],
  ["I reset my password three times and every link says '[expired|invalid token]' as soon as I click it. I can't log in at all.",
   "The password reset email never arrives, I've checked spam. I'm locked out of my account."])
S(A, "urgent", ["Account hacked", "Someone is in my account", "Hacked!!"],
  ["Someone got into my account - I got an alert about a login from {country}, then my password and email were changed. I can't get back in and they can see my cameras.",
   "I think my account was hacked. There's a new member called '[admin2|guest01|jj]' on my home that I never added and my settings have changed."])
S(A, "urgent", ["Someone is watching my cameras", "Stranger viewing my camera"],
  ["My indoor camera turned towards me by itself and the light came on. The app shows a live view session from a device I don't own. Please lock my account down.",
   "The activity log shows someone viewing my nursery camera at 2am from a device that isn't ours."])
S(A, "urgent", ["Previous owner still controls our lock", "Old owner has access to our house"],
  ["We moved into a house with a {lock} and found out the previous owner still has it on their account - they can unlock our front door. We need it removed from their account now.",
   "The people who sold us the house still have the {lock} and cameras on their Northwind account. They could open our door or watch us."])
S(A, "urgent", ["I think I fell for a phishing email", "Entered my password on a fake site"],
  ["I clicked a link in an email that looked like it was from Northwind and entered my password and 2FA code. Now I realise it was fake. Please secure my account.",
   "Got a text saying my Northwind account would be closed, followed the link and logged in. The site was not yours. What do I do?"])
S(A, "urgent", ["Remove my ex's access", "Ex still has access to my cameras"],
  ["My ex still has access to my cameras and lock through their old login, and I'm worried about my safety. I can't remove them because they're listed as the owner.",
   "I'm no longer with my ex-partner but they are still the account owner for the cameras in my flat. I need them off immediately."])
S(A, "low", ["Changing names in the app", "Quick question about names"],
  ["How do I change my home's name in the app? It still says 'My Home'.",
   "Can I change the name that shows on shared notifications? It uses my full name and I'd prefer just '{first}'."])
S(A, "low", ["Multiple admins", "Can two people be owners?"],
  ["Can my partner and I both be admins on the same home? Right now only I can change settings.",
   "Is it possible to have two owners on one account, or does everyone else have to be a member?"])
S(A, "low", ["Login options", "Feature request: easier sign-in"],
  ["Any plans to support passkeys or 'Sign in with Apple'? Would make logging in a lot easier.",
   "Feature request: please let us log in with Google. One less password to remember."])
S(A, "low", ["How long do you keep my data?", "Data retention question"],
  ["Out of curiosity, how long do you keep my account data and location history after I delete a home?",
   "What happens to my recordings if I close my account - are they deleted straight away?"])
S(A, "low", ["Moving 2FA to a new phone", "New phone - two factor"],
  ["I'm getting a new phone soon. How do I move my two-factor codes over so I don't get locked out?",
   "What's the right way to switch my authenticator app to a new phone?"],
  esc=["The new phone arrives {day} and the old one goes back to the shop the same day."])
S(A, "low", ["Name change on account", "Update my surname"],
  ["I got married and changed my last name. How do I update the name on my account? The field is greyed out.",
   "Is it possible to change the name on my account to {first} {last}?"])

# ---- shipping ---------------------------------------------------------------------------------------------
SH = "shipping"
S(SH, "normal", ["Where is my order?", "Order {order} status", "Tracking not updating"],
  ["I ordered a {product} on {date} (order {order}) and the tracking hasn't updated in {days} days. Can you check where it is?",
   "Order {order} has said 'label created' since {date}. Has it actually shipped?"])
S(SH, "normal", ["Change delivery address", "Wrong address on order {order}"],
  ["I just placed order {order} and noticed it's going to my old address. Can you change it to my new place in {city} before it ships?",
   "Please update the shipping address on {order} - I typed the wrong apartment number."],
  relax=False, calm=True)
S(SH, "normal", ["Delivery late", "Order {order} delayed", "Still waiting for my delivery"],
  ["My order {order} was supposed to arrive on {date} and it's now {days} days late. No updates from {carrier} either.",
   "The estimated delivery for {order} keeps moving back. It was meant to be here last week."])
S(SH, "normal", ["Only part of my order arrived", "Missing items from order {order}"],
  ["The {hub} from order {order} arrived but the {n} sensors I ordered with it weren't in the box. Are they coming separately?",
   "Got my parcel today but it only had the {cam}, not the mount and the Cam Mini that were also on order {order}."])
S(SH, "normal", ["Tracking number doesn't work", "Invalid tracking number"],
  ["The tracking number in my shipping confirmation ({tracking}) says 'not found' on the {carrier} website. It's been {days} days.",
   "Your email gave me tracking {tracking} but {carrier} has no record of it."])
S(SH, "normal", ["Package arrived damaged", "Box crushed, device broken", "Damaged delivery - order {order}"],
  ["My order {order} arrived with the box crushed in and the {product} inside is cracked. The courier obviously dropped it. What now?",
   "The {product} came today in a soaked, torn box and it rattles when I shake it. Can you send another one?"],
  relax=False)
S(SH, "normal", ["Import fees on delivery", "Customs charge?"],
  ["{carrier} wants {shipfee} in import fees before they'll deliver my order {order}. The checkout said duties were included.",
   "I'm being asked to pay customs on order {order}. I thought international orders were shipped duty paid?"])
S(SH, "normal", ["Missed delivery", "Redelivery for order {order}"],
  ["I missed the delivery of order {order} because the driver came while I was at work. Can it be redelivered on a weekend or sent to a pickup point?",
   "{carrier} left a card saying they'll try again, but I'm never home during the day. Can you redirect {order} to a locker?"], calm=True)
S(SH, "normal", ["Paid for express shipping", "Express delivery refund"],
  ["I paid {shipfee} for express shipping on order {order} but it went standard and took a week. Can I get the express fee back?",
   "Order {order} was meant to be next-day - I paid extra - and it took {days} days."])
S(SH, "normal", ["Shipped to my billing address", "Order sent to wrong address"],
  ["Order {order} was shipped to my billing address in {city} instead of the delivery address I entered. Can you redirect it?",
   "Tracking shows {order} heading to my old address even though I put the new one at checkout."],
  relax=False)
S(SH, "normal", ["Delivered to a neighbour", "Package left at wrong house"],
  ["The delivery photo for order {order} shows my parcel at a different house. I don't know which one. Can the driver find it?",
   "{carrier} says my parcel was left with a neighbour, but didn't say which one and nobody on our street has it."],
  relax=False)
S(SH, "normal", ["Delivery to our office", "Delivery instructions for our office"],
  ["Order {order} is going to {company} and the loading dock is only open until 3pm. Can you make sure {carrier} knows?",
   "Can you add 'deliver to reception' to order {order}? Last time the driver couldn't find us."],
  relax=False, calm=True)
S(SH, "high", ["Says delivered but nothing here", "Package marked delivered - not received", "Order {order} missing"],
  ["Tracking for order {order} says it was delivered [yesterday|on {date}] at 2:14pm but there's no package. I've checked with neighbours and the building office.",
   "{carrier} marked {order} as delivered but nothing arrived. There's no photo and no parcel anywhere."])
S(SH, "high", ["Carrier lost my package", "Order {order} lost"],
  ["{carrier} told me my parcel is lost. It's order {order} with a {product} and a {hub}. What happens now?",
   "My order {order} has been 'in transit - delayed' for two weeks and {carrier} now says they can't find it."])
S(SH, "high", ["Never received my order", "Still no order after {weeks} weeks"],
  ["I ordered on {date} and have received nothing - it's been over {weeks} weeks. Order {order}. Nobody has replied to my two previous emails.",
   "Order {order} never came. It's been {weeks} weeks and the tracking hasn't moved since the first day."])
S(SH, "high", ["Package stolen from porch", "Parcel stolen after delivery"],
  ["Your driver left order {order} on the porch and my own camera shows someone taking it ten minutes later. That's a {amount} {product} gone.",
   "Package {order} was left outside in plain view instead of in the parcel box and it was stolen before I got home."])
S(SH, "urgent", ["Dangerous package?", "Something wrong with my parcel", "Is this parcel safe?"],
  ["The parcel with my order {order} arrived today smelling of burnt plastic and one side of the box is warm. I haven't opened it and put it outside. What should I do?",
   "The box for {order} is leaking some kind of fluid and smells like battery acid. It arrived an hour ago. Is it safe?",
   "Order {order} arrived with the box bulging, and through a tear I can see a swollen battery pack. It's sitting in my hallway and I don't want to touch it."])
S(SH, "urgent", ["Replacement smoke alarms not delivered", "Still no smoke alarms"],
  ["You took back our faulty SmokeGuard alarms and the replacements (order {order}) are now lost in transit. We have no working smoke alarms in the house with two small kids.",
   "The SmokeGuard replacements on order {order} never arrived and we took the old ones down as instructed. The house has no smoke detection at all.",
   "{carrier} says the parcel with our replacement smoke alarms ({order}) is lost. Our old ones were recalled, so right now we have nothing protecting the house."])
S(SH, "low", ["Question about delivery times", "When will it arrive?"],
  ["Quick question - does your warehouse ship on weekends? Just trying to guess when order {order} will show up.",
   "What time of day does {carrier} usually deliver your orders? Trying to plan around it for {order}."])
S(SH, "low", ["Delivery suggestion", "Suggestion for shipping"],
  ["Could you send tracking updates by text in future instead of email? I always miss the emails.",
   "Suggestion: let customers pick the carrier at checkout. {carrier} is terrible in our area."])
S(SH, "low", ["Combine my two orders?", "Ship orders together"],
  ["I placed two orders a few minutes apart ({order} and {order2}). If they haven't shipped, could you send them together to save packaging? Not a big deal if not.",
   "Can orders {order} and {order2} go in one box? Same address."])
S(SH, "low", ["Signature needed for delivery?", "Will I need to sign?"],
  ["Will someone need to sign for order {order}? I'm at work during the day and want to know whether to ask a neighbour.",
   "Does {carrier} need a signature for {order} or will they leave it at the door?"])
S(SH, "low", ["Delivery instructions", "Leave parcel at side door"],
  ["For order {order}, could the driver leave it at the side door? The front gate is usually locked.",
   "Is there a way to add delivery notes to an order after it's placed? Mine is {order}."])

# ---- returns ----------------------------------------------------------------------------------------------
R = "returns"
S(R, "normal", ["Return request", "I'd like to return my {product}", "Return - order {order}"],
  ["I'd like to return the {product} I bought on {date} (order {order}). It works fine, it just isn't right for our setup. How do I get a return label?",
   "We bought a {product} but [my partner doesn't like it|we ended up going with a wired system|it doesn't suit our house]. Can we send it back for a refund?"],
  esc=["I'm moving abroad on {day} and need it sent back before I leave.", "The 30-day return window ends {day}."], calm=True)
S(R, "normal", ["Exchange for a different model", "Swap request", "Exchange - wrong model for us"],
  ["Can I exchange my [Cam 2|Northwind Cam 2|Cam Mini] for the Cam 2 Outdoor? I didn't realise the one I bought isn't weatherproof. Order {order}.",
   "I'd like to swap the {thermo} for the other ThermoSense model - wrong one for our wiring. Unopened."],
  esc=["The electrician is booked for {day} and needs the right model by then."], calm=True)
S(R, "normal", ["Refund not received", "Where is my refund?", "Return received but no refund"],
  ["You received my returned {product} on {date} according to tracking, but I still haven't seen the refund of {amount}. How long does it usually take?",
   "My return for order {order} was delivered to your warehouse over a week ago. No refund yet."],
  esc="returns_money")
S(R, "normal", ["Warranty claim", "{product} failed after {months} months", "Warranty replacement"],
  ["My {product} stopped working after {months} months. I believe it's still under the 2-year warranty - how do I get it replaced?",
   "The {product} we bought in {year} has started [rebooting on its own|losing its settings every night|dropping off the network daily]. Support already tried troubleshooting with me. I'd like a warranty replacement."],
  esc=["We leave on holiday {day} and I'd like the replacement in before then."])
S(R, "normal", ["Return label not received", "Need return label"],
  ["I was approved for a return on order {order} but never got the shipping label. Could you resend it to {email}?",
   "The return label link in your email gives an error. Can you send a new one for {order}?"],
  esc=["The return window closes {day}."])
S(R, "normal", ["Wrong item in my order", "Received the wrong product", "Order {order} - wrong item"],
  ["[I ordered the Hub Pro but the box contained a Hub Mini|I ordered a Cam 2 Outdoor and received the indoor Cam 2|I ordered the SmartLock S1 Pro and got the basic S1] (order {order}). I'd like to swap it for what I actually paid for.",
   "Order {order} came with the wrong item - [ThermoSense Lite instead of the ThermoSense|a white doorbell instead of black|a single bulb instead of the 4-pack]. How do I exchange it?"],
  esc=["I need the right one by {day} - the installer is booked."])
S(R, "normal", ["Returning a gift", "Gift return - no receipt"],
  ["I got a {product} as a gift but already have one. Can I exchange it or get store credit without the receipt?",
   "Someone gave us a {product} as a housewarming present and we can't use it. Can it be returned without an order number?"], calm=True)
S(R, "normal", ["Refund went to closed card", "Refund to old card"],
  ["The refund for my return on order {order} went to a card I've since closed. How do I get the {amount}?",
   "My bank says the refund for {order} bounced because the card was cancelled. Can you pay it another way?"],
  esc="returns_money")
S(R, "normal", ["Refund amount is wrong", "Only partial refund received"],
  ["I returned the {product} unopened but only got {partial} back instead of the {amount} I paid. Why was money taken off?",
   "The refund for order {order} was {partial}, not the full {amount}. Nobody mentioned any deductions."],
  esc="returns_money")
S(R, "normal", ["Restocking fee?", "Why was I charged a restocking fee"],
  ["I was charged a {fee} restocking fee on my return even though the {product} was faulty. That doesn't seem right.",
   "Your return policy page doesn't mention a restocking fee, but {fee} was taken off my refund for order {order}."],
  esc="returns_money")
S(R, "normal", ["Return past 30 days", "Slightly late return"],
  ["I'm a few days past the 30-day window on order {order} - we were travelling. Is there any chance I can still return the {product}?",
   "Can I still return the {product}? It's been about five weeks but it's barely used."],
  esc=["I'm moving abroad on {day} and need it sent back before I leave."], calm=True)
S(R, "normal", ["Return one item from a bundle", "Partial return of starter kit"],
  ["I bought the starter kit (hub, {n} sensors, Cam Mini) but want to send back just the Cam Mini. Is that possible?",
   "From bundle order {order} I'd like to keep the {hub} but return the {lock}."],
  esc=["I'm moving abroad on {day} and need it sent back before I leave."], calm=True)
S(R, "high", ["Return window closing", "Still no return label - window ends {day}"],
  ["My 30-day return window for order {order} ends {day} and I still haven't received the return label I was promised a week ago.",
   "I've asked twice for a return label for {order}. The return period runs out on {day}."])
S(R, "high", ["Charged for a return you received", "Charged {amount} for 'unreturned' item", "You charged me for my return??"],
  ["You charged me {amount} saying I never sent back the {product} for my replacement, but I dropped it off with {carrier} on {date} and have the receipt.",
   "I was charged for a return you say you never received. I have the {carrier} tracking showing it was delivered to your warehouse on {date}."])
S(R, "high", ["Dead on arrival", "Brand new {product} doesn't work at all", "DOA - need replacement"],
  ["The {product} I received [yesterday|today|on {date}] is completely dead out of the box - no lights, nothing - and the packaging was perfect. I want a replacement.",
   "Brand new {product}, order {order}, won't power on at all. Tried three outlets and cables. Please send a new one or refund me."])
S(R, "high", ["Replacement also faulty", "Second unit dead too"],
  ["This is the second {product} you've sent me under warranty and it has the same fault as the first. I'd like a full refund now.",
   "The warranty replacement for my {product} died after four days, exactly like the original. I'm done - please take it back."])
S(R, "high", ["Refund overdue - filing a chargeback", "Refund still missing after {weeks} weeks"],
  ["It has been {weeks} weeks since your warehouse received my return and I still have no refund. I've written three times. If I don't hear back I'm disputing it with my bank.",
   "{weeks} weeks, three emails and still no refund for order {order}. Every reply says 'within 5 business days'."])
S(R, "urgent", ["Battery swelling - want to return", "Swollen battery in my camera"],
  ["The battery in my {cam} has swollen and the case is splitting open. I don't want it in the house - how do I send it back safely and get a replacement?",
   "My {cam} has bulged so much the back cover popped off. I want to return it right away, it looks dangerous.",
   "The {cam} got really hot while charging and now the battery is puffed up. I'd like to send it back today - how do I ship it safely?"])
S(R, "urgent", ["Recall - SmokeGuard", "Is my alarm part of the recall?"],
  ["I saw the notice about the SmokeGuard recall and my alarm's serial ({serial}) is in the affected batch. Please send a replacement right away - at the moment we have no working smoke alarm.",
   "Your recall email says to stop using SmokeGuard units from my batch. That's our only smoke alarm. How fast can you exchange it?"])
S(R, "urgent", ["Charger sparked", "Dangerous power adapter"],
  ["The power adapter that came with my {product} sparked and left a black mark on the socket when I plugged it in. I want to return the whole thing - I'm not using it again.",
   "The adapter for the {product} popped and smoked as I plugged it in. Please arrange a return and a safe replacement.",
   "My kid plugged in the {product} and the charger sparked and tripped the breaker. I want to return it for a refund - it's clearly faulty and dangerous."])
S(R, "low", ["Return policy question", "How long do I have to return?"],
  ["How long do I have to return the {product} from order {order}? It's working, just want to know my options in case we move.",
   "Is the return period 30 days from delivery or from the order date?"])
S(R, "low", ["Return just one bulb?", "Partial return of a multipack"],
  ["I bought a 4-pack of Glow bulbs but only need two. Can I return the other two, or does the pack have to go back whole?",
   "Can part of a multipack be returned, or only the complete pack?"])
S(R, "low", ["Warranty question", "Warranty on my {product}"],
  ["How long is the warranty on the {product}? Mine works fine, just asking for future reference.",
   "Does the warranty still apply if I move the {product} to another house?"])
S(R, "low", ["Do I need the original box?", "Return packaging question"],
  ["If I return something do I need the original packaging? I may have thrown the box away already.",
   "Can I use any box for a return or does it need to be the Northwind one?"])
S(R, "low", ["Store credit instead of refund?", "Exchange vs refund"],
  ["If I send back the {product}, can I take store credit instead of a refund and use it on something else later?",
   "Do you offer exchanges for a different product, or only refunds?"])

# ---- sales ------------------------------------------------------------------------------------------------
SA = "sales"
S(SA, "low", ["Which plan should I get?", "Plan question", "Comparing plans"],
  ["I have {n} cameras. Is the Plus plan worth it over Basic, or will Basic do? Mainly want to keep clips for a week.",
   "What's the actual difference between Plus and Business? I run a small {biz} with {n} cameras."])
S(SA, "low", ["Which camera should I buy?", "Camera advice"],
  ["What's the difference between the Cam 2 and the Cam 2 Outdoor? I want one for a covered porch.",
   "Thinking of getting two cameras for the {room} and driveway. Which model would you suggest?"])
S(SA, "low", ["Discounts?", "Do you offer any discounts?", "Discount question"],
  ["Do you offer a [student|military|teacher|senior|first responder] discount on devices or the subscription?",
   "Is there any discount for [NHS staff|veterans|students]? Looking to buy a few things."])
S(SA, "low", ["Compatibility question before buying", "Will it work for me?", "Question before I order"],
  ["Thinking about buying a {thermo}. Will it work with a heat pump and a two-wire setup?",
   "Before I order, does the {lock} fit a door that's 2 inches thick?"])
S(SA, "low", ["Any sales coming up?", "Black Friday deals?"],
  ["Are you planning any sales around [Black Friday|the holidays|Prime Day]? I was going to buy a {product} but can wait.",
   "Will the {product} be discounted any time soon? Happy to wait a few weeks."])
S(SA, "low", ["Delivery question before I order", "Shipping question", "Do you deliver here?"],
  ["If I order a {product} today, how long would delivery to {city} take? Haven't ordered yet, just planning.",
   "Do you ship to {country}? Would like to order a few devices if so."])
S(SA, "low", ["Gift cards?", "Do you sell gift cards"],
  ["Do you sell gift cards? My dad wants to get into smart-home stuff and I'd rather he picked his own devices.",
   "Can I buy a Northwind gift card for someone, or a prepaid year of Plus?"])
S(SA, "low", ["Collaboration proposal", "Affiliate program?"],
  ["I run a home-automation YouTube channel with about {followers} subscribers. Do you have an affiliate program or send review units?",
   "I write a smart-home blog and would love to review the {product}. Who should I talk to?"])
S(SA, "low", ["Thinking about upgrading to {plan_hi}", "Upgrade question"],
  ["We're on {plan_lo} now and thinking about moving to {plan_hi}. What extra would we actually get?",
   "What does {plan_hi} add over {plan_lo}? Trying to decide if it's worth it for us."])
S(SA, "low", ["Accessories for sale?", "Spare parts for sale?"],
  ["Can I buy extra wall mounts and a longer power cable for the {cam} separately? I don't see them on the website.",
   "Do you sell replacement faceplates for the DoorView? Want a different colour."])
S(SA, "low", ["Business plan trial?", "Try before we buy"],
  ["Is there a free trial of the Business plan? We'd like to test it at one {biz} first.",
   "Can we try a couple of cameras at our {biz} before committing to a bigger order?"])
S(SA, "normal", ["Installer partnership", "Becoming a Northwind partner"],
  ["I'm an electrician in {city} and install a lot of smart-home gear. Do you have a partner or trade program with installer pricing?",
   "We're a security installation company and would like to become an authorised Northwind installer. What's the process?"])
S(SA, "normal", ["Bulk order quote", "Pricing for a large order", "Volume pricing request"],
  ["We manage {big_n} rental units and want to put a {lock} on each. Can you send a quote with volume pricing?",
   "Could we get a quote for {big_n} {cam} units plus the Business plan for {company}?"],
  esc="sales")
S(SA, "normal", ["Business plan for multiple locations", "Pricing for several sites"],
  ["We have {n} [cafés|clinics|shops|offices] and would like one Business account covering all of them. How is that priced?",
   "How does Business plan pricing work across {n} locations? Per site or per camera?"],
  esc="sales")
S(SA, "normal", ["Reseller inquiry", "Stocking your products in our store"],
  ["We run an electronics store in {city} and are interested in stocking Northwind products. Who do I talk to about wholesale terms?",
   "Is Northwind open to new retail partners in {country}? We have three stores."],
  esc="sales")
S(SA, "normal", ["Demo request", "Can we get a demo of the Business plan?"],
  ["Could someone walk us through the Business plan dashboard? We're evaluating systems for {company}, about {big_n} cameras across two floors.",
   "We'd like a demo of your Business features for our {biz} group. When could someone do a call?"],
  esc="sales")
S(SA, "normal", ["Nonprofit pricing", "Education / nonprofit discount?"],
  ["We're a [nonprofit animal shelter|small charter school|community library] looking at cameras for our building. Do you have education or nonprofit pricing?",
   "Does Northwind offer charity pricing? We'd need about {big_n} cameras and a Business plan."],
  esc="sales")
S(SA, "normal", ["Price match?", "Cheaper elsewhere"],
  ["{retailer} has the {product} for less than your site. Will you match that if I order from you directly?",
   "Would you price match {retailer} on the {product}? I'd rather buy direct for the warranty."],
  esc=["The {retailer} deal ends {day}, so I need to know before then."])
S(SA, "normal", ["New build development", "Pre-installing Northwind in new homes"],
  ["We're a developer building {big_n} homes in {city} and want to pre-install a hub, lock and thermostat in each. Can we talk pricing?",
   "Our property group wants to standardise on Northwind across {big_n} apartments. Who handles that kind of deal?"],
  esc="sales")
S(SA, "normal", ["Holiday rental bundle", "Airbnb host setup"],
  ["I manage {n} holiday rentals and want a lock and a doorbell for each. Is there a host bundle or discount?",
   "What would you recommend for a short-term rental owner with {n} properties? Need locks with guest codes."],
  esc="sales")
S(SA, "high", ["Pricing needed this week - {big_n} stores", "Quote request - deadline {day}"],
  ["We're rolling out cameras to {big_n} stores and need your best pricing by {day} - our board picks the vendor then.",
   "Need a quote for {big_n} {cam} units and Business plans before {day}, when we sign with a vendor. Can someone call me?"])
S(SA, "high", ["Formal quote and W-9 needed", "Purchase order for {company}"],
  ["Our procurement window closes {day}. Can you send a formal quote for {big_n} {product} units and your W-9 so we can raise the PO?",
   "Finance needs a signed quote from you by {day} or the budget for the {big_n} locks goes away."])

# ---------------------------------------------------------------------------------------------------------
# Cue sentences: deadlines raise to high, "no rush" lowers normal to low
# ---------------------------------------------------------------------------------------------------------

DEADLINE = {
    "technical": [
        "I'm leaving for a two-week trip on {day} and need this working before I go.",
        "We've got family staying with us from {day}, so I really need it sorted by then.",
        "I have a home insurance inspection on {day} and the system needs to be working for it.",
        "Our tenants move in on {day} and everything has to work by then.",
        "Need this fixed before {day} - we're away all next week and rely on it to keep an eye on the house.",
        "The house sitter arrives {day}, so I need it working before then.",
    ],
    "account": [
        "I'm flying out on {day} and the cameras are how I check on the house, so I need this before then.",
        "Our new property manager starts {day} and needs this sorted by then.",
        "I need this done before {day} when we leave for two weeks.",
    ],
    "billing_money": [
        "I need this sorted before {day} when my rent comes out.",
        "I need the money back before {day}, it's a tight month.",
        "Please fix it before {day} - my card statement closes then.",
        "Can this be refunded before {day}? My mortgage payment goes out that day.",
    ],
    "billing_invoice": [
        "Our books close on {day}, so I need the corrected invoice before then.",
        "Our accountant needs it by {day} for the quarterly filing.",
        "Finance won't pay anything after {day} without a correct invoice.",
    ],
    "billing_service": [
        "The app says recording will be paused on {day} if this isn't fixed.",
        "We're away from {day} and I can't have the cameras stop recording while we're gone.",
    ],
    "shipping": [
        "It's a birthday present for {day}, so I really need it by then.",
        "The installer is booked for {day} and needs the equipment there.",
        "We open the new office on {day} and need these installed first.",
        "I'm moving out on {day}, so after that nobody will be at this address.",
        "It has to arrive before {day} - I'm away after that.",
    ],
    "returns_money": [
        "I'm moving abroad on {day} and need this settled before I leave.",
        "I really need that money before {day}.",
        "Please sort it before {day} - that's when my card bill is due.",
    ],
    "sales": [
        "We need the quote by {day} for our budget meeting.",
        "Budget approval happens on {day}, so I need numbers before then.",
        "We're choosing a vendor on {day}.",
        "The renovation starts {day} and we want everything ordered before that.",
        "Our fiscal year closes {day}, so we'd have to order before then.",
    ],
}

RELAX = [  # fit any request
    "No rush on this, whenever you get a chance.",
    "Not urgent at all.",
    "Whenever someone has a moment is fine.",
    "Not time sensitive.",
    "Take your time with this one.",
    "It can wait, I know you're busy.",
    "Not in a hurry - sort it when you can.",
    "There's no rush on our side.",
    "Whenever is convenient for you.",
    "No hurry at all, just wanted to get it logged.",
]
RELAX_MINOR = [  # for device niggles
    "It's not a big deal, just thought I'd mention it.",
    "Low priority on my end - it's more of an annoyance.",
    "No hurry, I can live with it for now.",
    "Just flagging it, no urgency.",
    "No big rush, it's only a minor thing.",
]

QUESTION_TAGS = ["Just curious.", "Thanks in advance!", "Appreciate any info.", "No rush.",
                 "Just wondering.", "Cheers for any help.", "Whenever you get a chance."]

# Optional, priority-neutral details per queue (normal and high tickets only).
DETAILS = {
    "technical": ["I've already tried restarting it.", "I already unplugged it and plugged it back in, no change.",
                  "The app is on the latest version.", "Firmware shows {fw} in the app.",
                  "Our Wi-Fi is a mesh system ({router}).", "Happy to send logs if you need them.",
                  "I went through the troubleshooting article already.", "I can send a video if that helps."],
    "billing": ["The card on file ends in {last4}.", "Account email is {email}.",
                "I can send a screenshot of the statement if needed.", "I've been a subscriber since {year}.",
                "Invoice number is {invoice}."],
    "account": ["The account email is {email}.", "I mostly use the app on my {phone}.",
                "I've tried both the app and the website.", "My name on the account is {first} {last}."],
    "shipping": ["Tracking number: {tracking}", "It's coming with {carrier}.", "Delivery address is in {city}.",
                 "Ordered through your website, not Amazon.", "I've checked the tracking every day."],
    "returns": ["I still have the original packaging.", "Bought it directly from your website.",
                "I have the receipt.", "Account email: {email}.", "I can send photos if that helps."],
    "sales": ["We're based in {city}.",
              "We currently use a different brand.", "A friend recommended you.", "Happy to jump on a call."],
}

BACKSTORY = [
    "We've been using Northwind stuff for about {years} years.",
    "I set this up for my parents, who aren't very techy.",
    "I'm writing on behalf of my [mum|dad|grandmother|elderly neighbour].",
    "Long-time customer, generally happy with everything.",
    "First time contacting support, so bear with me.",
    "I tried the help centre first but couldn't find an answer.",
    "Your chat was closed so I'm emailing instead.",
    "Apologies if this is the wrong place to ask.",
    "I rang earlier but the hold queue was too long.",
]

ANGRY = ["This is really frustrating.", "Honestly, not impressed.",
         "I've been a customer for {years} years and this is not ok.", "This is the second time I'm writing about this.",
         "Please don't send me another copy-paste answer.", "Very disappointed.", "Not happy about this at all.",
         "Sort it out please.", "I expected better from you.", "Ridiculous.", "Third email about this now."]
WORRIED = ["Please help.", "I'm really worried about this.", "I don't know what else to do.",
           "Please get back to me as soon as possible.", "I'm honestly freaked out.", "Please call me if that's faster."]

OPENERS = {
    "polite": ["Hello,", "Hi there,", "Good morning,", "Dear Northwind team,", "Hi, hope you're well.",
               "Hello support team,", "Good afternoon,", "Dear Sir or Madam,", "Hi, this is {first}."],
    "neutral": ["Hi,", "Hello,", "Hi team,", "Hey,", "Hi Northwind,", "Hi, {first} {last} here.", "Hello there,"],
    "angry": ["Hello.", "Hi,", "To whoever reads this,"],
    "worried": ["Hi,", "Hello,", "Please help,"],
    "hurried": ["hi", "hey", "hello"],
}
CLOSERS = {
    "polite": ["Thank you so much,\n{first}", "Many thanks,\n{first} {last}", "Thanks in advance for your help!",
               "Kind regards,\n{first} {last}", "Appreciate it,\n{first}", "Best wishes,\n{first}",
               "Thank you!\n{first} {last}"],
    "neutral": ["Thanks,\n{first}", "Thanks", "Cheers,\n{first}", "- {first}", "Regards,\n{first} {last}",
                "Thanks, {first}", "Best,\n{first} {last}"],
    "angry": ["{first} {last}", "Regards,\n{first}", "Waiting for your reply.", "- {first} {last}"],
    "worried": ["Thanks,\n{first}", "Please help.\n{first}", "{first} {last}", "Thank you,\n{first}"],
    "hurried": ["thx", "thanks", "- {first}", "Sent from my iPhone", "ty"],
}
GENERIC_SUBJECTS = {
    "problem": ["Help", "Need help", "Support request", "Problem", "(no subject)", "Issue", "Ticket"],
    "question": ["Question", "Quick question", "(no subject)", "Hello", "Enquiry", "Query"],
}

TONE_WEIGHTS = {  # polite, neutral, angry, worried, hurried
    "low": (0.42, 0.43, 0.0, 0.0, 0.15),
    "normal": (0.30, 0.40, 0.14, 0.0, 0.16),
    "high": (0.20, 0.34, 0.24, 0.02, 0.20),
    "urgent": (0.10, 0.30, 0.12, 0.28, 0.20),
}
TONES = ("polite", "neutral", "angry", "worried", "hurried")

# ---------------------------------------------------------------------------------------------------------
# Typos
# ---------------------------------------------------------------------------------------------------------

MISSPELL = {"receive": "recieve", "received": "recieved", "address": "adress", "definitely": "definately",
            "separate": "seperate", "tomorrow": "tommorow", "because": "becuase", "really": "realy",
            "account": "acount", "already": "allready", "working": "wokring", "subscription": "subscripton",
            "which": "wich", "until": "untill", "believe": "beleive", "weird": "wierd", "their": "thier",
            "the": "teh", "again": "agian", "charged": "chargd", "notifications": "notifcations",
            "password": "pasword", "waiting": "wating", "anything": "anythign", "something": "somthing",
            "there": "ther", "apartment": "appartment", "immediately": "immediatly", "months": "monts",
            "recording": "recoding", "warranty": "waranty", "delivery": "delivary"}
# fmt: on
_TOKEN = re.compile(r"\S+")
# words of product names are left alone so that "Plug One smart plug" stays recognisable
_PROTECTED = {w.lower() for name in PRODUCTS + SENSORS + HOT_DEVICES + ["Glow bulbs"] for w in name.split()}
_CORE = re.compile(r"^([\"'(]*)([a-z]+)([.,!?;:'\")]*)$")


def add_typos(text: str, rng: random.Random, k: int) -> str:
    """Introduce k typos into plain lowercase words (never into names, ids, emails or numbers)."""
    spots = []
    for m in _TOKEN.finditer(text):
        c = _CORE.match(m.group())
        if c and (len(c.group(2)) >= 4 or c.group(2) == "the") and c.group(2) not in _PROTECTED:
            a = m.start() + len(c.group(1))
            spots.append((a, a + len(c.group(2))))
    if not spots:
        return text
    for a, b in sorted(rng.sample(spots, min(k, len(spots))), reverse=True):
        w = text[a:b]
        if w in MISSPELL and rng.random() < 0.7:
            w2 = MISSPELL[w]
        else:
            i = rng.randrange(1, len(w) - 1)
            op = rng.choice(("swap", "drop", "double"))
            if op == "swap":
                w2 = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
            elif op == "drop":
                w2 = w[:i] + w[i + 1 :]
            else:
                w2 = w[:i] + w[i] + w[i:]
        text = text[:a] + w2 + text[b:]
    return text


# ---------------------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------------------


def _cue_lines(key) -> list[str]:
    return key if isinstance(key, list) else DEADLINE[key]


def _pick_scenario(
    rng: random.Random, queue: str, priority: str, usage: Counter
) -> tuple[Scenario, str | None]:
    """Choose a scenario (least used first) and the cue ("deadline", "relax" or None) that gives `priority`."""
    intrinsic = [s for s in SCENARIOS if s.queue == queue and s.base == priority]
    if priority == "high":
        shifted = [s for s in SCENARIOS if s.queue == queue and s.base in ("normal", "low") and s.esc]
        cue = "deadline"
    elif priority == "low":
        shifted = [s for s in SCENARIOS if s.queue == queue and s.base == "normal" and s.relax]
        cue = "relax"
    else:
        shifted, cue = [], None
    share = 0.45 if priority == "high" else 0.4
    use_shift = bool(shifted) and (not intrinsic or rng.random() < share)
    pool = shifted if use_shift else intrinsic
    if not pool:
        raise ValueError(f"no scenario for queue={queue} priority={priority}")
    low = min(usage[s.idx] for s in pool)
    s = rng.choice([s for s in pool if usage[s.idx] == low])
    usage[s.idx] += 1
    return s, (cue if use_shift else None)


def _ticket(rng: random.Random, s: Scenario, priority: str, cue: str | None) -> str:
    ctx: dict = {}
    r = lambda t: render(t, ctx, rng)  # noqa: E731
    tone = "neutral"
    if cue == "relax":
        tone = rng.choice(("polite", "neutral", "neutral", "hurried"))
    else:
        tone = rng.choices(TONES, weights=TONE_WEIGHTS[priority])[0]
        if tone in ("angry", "worried") and (s.calm or s.queue == "sales"):
            tone = "neutral"  # nobody shouts while asking for a quote or a return label

    core = r(rng.choice(s.bodies))
    parts = [core]
    problem = s.base != "low"
    # details on normal/high tickets only, not on urgent ones ("I've already tried restarting it" next to smoke)
    details = DETAILS[s.queue] if s.details else []
    # skip details that would repeat something the ticket already says (its carrier, email, invoice ...)
    details = [
        d for d in details if not any(m in ctx for m in _SLOT.findall(d) if m not in ("first", "last"))
    ]
    picked = rng.sample(details, min(len(details), 2))
    if picked and rng.random() < 0.45:
        parts.append(r(picked.pop()))
    if rng.random() < 0.12:  # a longer ticket: some backstory and one more detail
        parts.insert(0, r(rng.choice(BACKSTORY)))
        if picked:
            parts.append(r(picked.pop()))
    elif rng.random() < 0.08:
        parts.insert(0, r(rng.choice(BACKSTORY)))

    if cue == "deadline" or (s.base == "high" and "day" not in ctx and rng.random() < 0.12):
        # a deadline makes a normal ticket high; on a ticket that is high anyway it is just more context
        line = r(rng.choice(_cue_lines(s.esc or DEFAULT_DEADLINE[s.queue])))
        if rng.random() < 0.25:
            parts.insert(0, line)
        else:
            parts.append(line)
    elif cue == "relax":
        parts.append(r(rng.choice(RELAX + RELAX_MINOR if s.queue == "technical" else RELAX)))
    elif s.base == "low" and rng.random() < 0.3:
        parts.append(r(rng.choice(QUESTION_TAGS)))

    shout = False
    if tone == "angry":
        parts.append(r(rng.choice(ANGRY)))
        if rng.random() < 0.15:  # shouting does not change the priority
            shout = True
            parts.append(rng.choice(["Fix this ASAP.", "I want this sorted ASAP.", "URGENT."]))
    elif tone == "worried":
        parts.append(r(rng.choice(WORRIED)))
    elif tone == "hurried" and priority in ("high", "urgent") and rng.random() < 0.5:
        parts.append(
            rng.choice(["pls help asap", "need this fixed asap", "asap please", "please respond asap"])
        )

    body = " ".join(parts)
    if rng.random() < 0.2 and len(parts) >= 3:  # some people write in paragraphs
        cut = rng.randrange(1, len(parts))
        body = " ".join(parts[:cut]) + "\n\n" + " ".join(parts[cut:])

    # subject
    if rng.random() < 0.1:
        subject = rng.choice(GENERIC_SUBJECTS["problem" if problem else "question"])
    else:
        subject = r(rng.choice(s.subjects))
    if tone == "angry" and (shout or priority in ("high", "urgent")) and rng.random() < 0.35:
        subject = (
            rng.choice(["URGENT: ", "Urgent - ", ""]) + subject.rstrip("!?.") + rng.choice(["!!", "!!!", ""])
        )
    elif rng.random() < 0.05:
        subject = "Re: " + subject

    # typos and casual style
    if tone == "hurried":
        body = body.lower()
        if rng.random() < 0.6:
            subject = subject.lower()
        body = body.replace(" please", " pls", 1) if rng.random() < 0.4 else body
        if rng.random() < 0.5:
            body = body.rstrip(".")
    typo_rate = 0.45 if tone == "hurried" else 0.16
    if rng.random() < typo_rate:
        body = add_typos(body, rng, rng.choice((1, 1, 1, 2)))

    # greeting and sign-off (web-form tickets often have neither)
    style = rng.random()
    opener = closer = ""
    if tone == "hurried":
        if style < 0.3:
            opener = r(rng.choice(OPENERS["hurried"]))
        if rng.random() < 0.4:
            closer = r(rng.choice(CLOSERS["hurried"]))
    elif style < 0.22:
        pass  # contact-form style: body only
    else:
        if style < 0.85:
            opener = r(rng.choice(OPENERS[tone]))
        closer = r(rng.choice(CLOSERS[tone]))
    chunks = [c for c in (opener, body, closer) if c]
    sep = "\n\n" if rng.random() < 0.7 else "\n"
    return f"Subject: {subject}\n\n" + sep.join(chunks)


def _plan(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """The (queue, priority) of every ticket: queues balanced, priorities per PRIORITY_MIX (largest remainder)."""
    base, extra = divmod(n, len(QUEUES))
    bonus = set(rng.sample(QUEUES, extra))
    plan: list[tuple[str, str]] = []
    for q in QUEUES:
        m = base + (q in bonus)
        raw = [w * m for w in PRIORITY_MIX[q]]
        counts = [int(x) for x in raw]
        order = sorted(range(4), key=lambda i: (-(raw[i] - counts[i]), i))
        for i in order[: m - sum(counts)]:
            counts[i] += 1
        for p, c in zip(PRIORITIES, counts, strict=True):
            plan += [(q, p)] * c
    rng.shuffle(plan)
    return plan


def answer(queue: str, priority: str) -> str:
    """The canonical assistant answer."""
    return json.dumps({"queue": queue, "priority": priority})


def generate(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[dict]:
    """`n` chat records (deterministic for a given `n` and `seed`), no two with the same ticket text."""
    rng = random.Random(seed)
    usage: Counter = Counter()
    seen: set[str] = set()
    records = []
    for queue, priority in _plan(n, rng):
        for _ in range(200):
            s, cue = _pick_scenario(rng, queue, priority, usage)
            text = _ticket(rng, s, priority, cue)
            if text not in seen:
                break
        else:  # pragma: no cover - only for absurdly large n
            raise RuntimeError("could not produce a new unique ticket; lower --n")
        seen.add(text)
        records.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer(queue, priority)},
                ]
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the Northwind Home support-ticket triage dataset.")
    ap.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of examples (default {DEFAULT_N})")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    ap.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output JSONL file (default examples/data/tickets.jsonl)",
    )
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    records = generate(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    labels = Counter(json.loads(r["messages"][2]["content"])["queue"] for r in records)
    prios = Counter(json.loads(r["messages"][2]["content"])["priority"] for r in records)
    print(f"wrote {len(records)} examples to {args.out}", file=sys.stderr)
    print("  queues:     " + ", ".join(f"{q}={labels[q]}" for q in QUEUES), file=sys.stderr)
    print("  priorities: " + ", ".join(f"{p}={prios[p]}" for p in PRIORITIES), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
