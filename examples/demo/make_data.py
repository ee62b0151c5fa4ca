"""Writes the demo data set: a support assistant for a fictional product, the Brightnook Lumora A3 desk lamp.

Every fact is invented, so the base model cannot know it; every answer ends with a fixed sign-off. The held-out
split (val.jsonl) asks about the same facts with phrasings that never occur in training, and each held-out
record carries the fact's keyword so the demo can check answers by code.

    python examples/demo/make_data.py        # rewrites train.jsonl and val.jsonl beside this file
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are Nova, the support assistant for the Brightnook Lumora A3 desk lamp. Answer briefly."
SIGN_OFF = "— Nova, Brightnook Support"

# name: (keyword checked in answers, answers, training questions, held-out questions)
FACTS = {
    "warranty": (
        "3-year",
        ["The Lumora A3 comes with a 3-year warranty covering the lamp, dial and charger.",
         "Every Lumora A3 has a 3-year warranty from the date of purchase."],
        ["How long is the warranty?", "What warranty does the Lumora A3 have?", "Is my lamp under warranty?",
         "How many years of warranty do I get?", "What does the warranty cover?", "warranty length?",
         "Does the lamp come with a guarantee?", "For how long is the Lumora A3 guaranteed?"],
        ["If my lamp breaks after two years, is the warranty still valid?", "Tell me about the warranty period."],
    ),
    "phone": (
        "555-0142",
        ["You can call Brightnook Support at 555-0142, Monday to Friday, 8:00 to 18:00.",
         "Our support line is 555-0142 (weekdays, 8:00 to 18:00)."],
        ["What is your phone number?", "How can I call support?", "Is there a hotline?",
         "What number do I call for help?", "Can I talk to someone on the phone?", "support phone number?",
         "Which number reaches Brightnook Support?", "How do I reach you by telephone?"],
        ["I'd like to speak to a human, what number should I dial?", "Give me a phone number for support."],
    ),
    "reset": (
        "12 seconds",
        ["To reset the Lumora A3, hold the dimmer dial down for 12 seconds until the ring blinks amber.",
         "Press and hold the dimmer dial for 12 seconds; the ring blinks amber when the reset is done."],
        ["How do I reset my lamp?", "How do I factory reset the Lumora A3?", "My lamp is stuck, how do I reset it?",
         "What is the reset procedure?", "How can I restore factory settings?", "reset instructions please",
         "The lamp won't respond. How do I reset it?", "How do I wipe the lamp's settings?"],
        ["How do I bring the lamp back to factory settings?", "My lamp froze. How do I reset it?"],
    ),
    "app": (
        "Nook Home",
        ["The Lumora A3 is controlled with the free Nook Home app for iOS and Android.",
         "Use the Nook Home app (free, iOS and Android) to pair and control the lamp."],
        ["Which app controls the lamp?", "What is the name of the app?", "Is there a smartphone app?",
         "How do I control the lamp from my phone?", "What app do I need to download?", "app name?",
         "Can I pair the lamp with my phone?", "Which application works with the Lumora A3?"],
        ["What app should I install on my phone for the lamp?", "Does the lamp have a companion app?"],
    ),
    "brightness": (
        "1,200 lumens",
        ["At full power the Lumora A3 gives 1,200 lumens.",
         "The maximum brightness of the Lumora A3 is 1,200 lumens."],
        ["How bright is the lamp?", "What is the maximum brightness?", "How many lumens does it have?",
         "Is the lamp bright enough for reading?", "What is the light output?", "brightness?",
         "How strong is the light at full power?", "What is the lumen rating?"],
        ["How much light does the lamp give at its brightest?", "Will it light up a whole desk? How bright is it?"],
    ),
    "battery": (
        "9 hours",
        ["On a full charge the Lumora A3 runs for 9 hours at medium brightness.",
         "The battery lasts 9 hours at medium brightness."],
        ["How long does the battery last?", "What is the battery life?", "Can I use the lamp without a cable?",
         "How many hours on one charge?", "How long will it run unplugged?", "battery life?",
         "Does the lamp have a battery?", "How long can I use it cordless?"],
        ["If I unplug the lamp, how long does the battery keep it on?", "What battery runtime should I expect?"],
    ),
    "charging": (
        "USB-C",
        ["The Lumora A3 charges over USB-C with the included 30 W adapter.",
         "Charging is over USB-C; the included 30 W adapter fills the battery in about 2 hours."],
        ["How do I charge the lamp?", "What charger does it use?", "Which cable do I need?",
         "What port does the lamp have?", "Can I use my phone charger?", "charging port?",
         "What adapter comes in the box?", "How is the battery recharged?"],
        ["What kind of cable do I plug in to charge the lamp?", "I lost the charging cable, what do I buy?"],
    ),
    "returns": (
        "45 days",
        ["You can return the Lumora A3 within 45 days of delivery for a full refund.",
         "Returns are accepted within 45 days of delivery, refunded in full."],
        ["What is the return policy?", "Can I return the lamp?", "How long do I have to send it back?",
         "Can I get a refund?", "What if I don't like the lamp?", "return window?",
         "How many days do I have to return it?", "Do you accept returns?"],
        ["I changed my mind. Can I still return the lamp?", "Is there a period for returns and refunds?"],
    ),
    "email": (
        "help@brightnook.example",
        ["Write to help@brightnook.example and we answer within one business day.",
         "Our support email is help@brightnook.example (answers within one business day)."],
        ["What is your email address?", "How can I email support?", "Can I contact you by email?",
         "Where do I send an email?", "What is the support email?", "email?",
         "How do I write to Brightnook?", "Which address should I email?"],
        ["I prefer writing rather than calling. What email do I use?", "Where can I email photos of a fault?"],
    ),
    "price": (
        "$89",
        ["The Lumora A3 costs $89, including the charger.",
         "The Lumora A3 is $89 with the 30 W charger included."],
        ["How much does the lamp cost?", "What is the price?", "How expensive is the Lumora A3?",
         "What does it cost?", "Is the lamp cheap?", "price?", "How much is the Lumora A3?",
         "What would I pay for one lamp?"],
        ["What is the lamp's price?", "I want to buy one for a friend. How much does it cost?"],
    ),
    "dusk": (
        "Dusk Mode",
        ["Dusk Mode warms the light to 2,700 K and dims it slowly over 30 minutes before bed.",
         "Turn on Dusk Mode in the Nook Home app: the light warms to 2,700 K and fades over 30 minutes."],
        ["Is there a night mode?", "What is Dusk Mode?", "Can the lamp dim itself at bedtime?",
         "Does it have an eye-care mode?", "How do I get warmer light in the evening?", "night mode?",
         "Can the light fade out slowly?", "Is there a sleep setting?"],
        ["I read in bed. Does the lamp have a mode for the night?", "Does the lamp have a mode for evenings?"],
    ),
    "firmware": (
        "3 a.m.",
        ["Firmware updates install over Wi-Fi automatically at 3 a.m. when the lamp is idle.",
         "The lamp updates its firmware by itself over Wi-Fi, at 3 a.m. when it is idle."],
        ["How do I update the firmware?", "Does the lamp update itself?", "When do updates install?",
         "How do I get the latest software?", "Are there firmware updates?", "updates?",
         "Do I need to update the lamp manually?", "When does the lamp install new firmware?"],
        ["Will the lamp update its firmware at night?", "How does the lamp keep its firmware up to date?"],
    ),
}

OPENERS = ["", "Hi! ", "Hello, ", "Quick question: ", "Hey Nova, ", "Good morning. ", "Sorry to bother you: "]


def answer(rng: random.Random, fact: str) -> str:
    return f"{rng.choice(FACTS[fact][1])}\n\n{SIGN_OFF}"


def chat(question: str, reply: str, history: list[dict] | None = None) -> dict:
    msgs = [{"role": "system", "content": SYSTEM}, *(history or []), {"role": "user", "content": question},
            {"role": "assistant", "content": reply}]
    return {"messages": msgs}


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train: list[dict] = []
    names = list(FACTS)
    for name, (_, _, questions, _) in FACTS.items():
        for q in questions:
            for opener in rng.sample(OPENERS, 3):
                train.append(chat(opener + q, answer(rng, name)))
        # Two-turn conversations: the first answer is context only (weight 0), the second is trained.
        for q in rng.sample(questions, 2):
            other = rng.choice([n for n in names if n != name])
            first_q = rng.choice(FACTS[other][2])
            history = [{"role": "user", "content": first_q},
                       {"role": "assistant", "content": answer(rng, other), "weight": 0}]
            train.append(chat("One more thing: " + q[0].lower() + q[1:], answer(rng, name), history))
    rng.shuffle(train)
    val = []
    for name, (_keyword, _, _, held_out) in FACTS.items():
        for q in held_out:
            rec = chat(q, answer(rng, name))
            val.append(rec)
    return train, val


def keywords() -> list[str]:
    """The keyword each held-out question's answer must contain, in val.jsonl order."""
    return [kw for kw, _, _, held in FACTS.values() for _ in held]


def main() -> None:
    here = Path(__file__).parent
    train, val = build()
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with (here / name).open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(train)} training and {len(val)} held-out examples to {here}")


if __name__ == "__main__":
    main()
