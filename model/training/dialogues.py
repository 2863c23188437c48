"""The project's own dialogue corpus: short two-party exchanges over everyday topics.

Hand-written exchanges plus seeded templates (names, times, numbers, places, weather, plans).
A script line is ``"A: text"``; after the speaker letter, ``+`` marks a backchannel slot (the
listener may say "mm hmm" in this turn's pauses) and ``~`` an interruption point (the next
speaker may cut in before this turn ends). Numbers are spelt out so that espeak's number
parser never decides the wording. The held-out split is chosen by a hash of the dialogue id,
so it does not move when the corpus grows elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streaming.espeak import ACTIVITIES, DAYS, FOODS, NAMES, PLACES, number_words

Speaker = Literal["A", "B"]
BACKCHANNELS = ("Mm hmm.", "Yeah.", "Right.", "Okay.", "Uh huh.", "I see.", "Sure.", "Oh.")
HELDOUT_PERCENT = 10
PER_TEMPLATE = 12


@dataclass(frozen=True, slots=True)
class Turn:
    speaker: Speaker
    text: str
    backchannel: bool = False  # the listener may backchannel in this turn's pauses
    interruptible: bool = False  # the next turn may start before this one ends


@dataclass(frozen=True, slots=True)
class Dialogue:
    id: str
    topic: str
    turns: tuple[Turn, ...]

    @property
    def heldout(self) -> bool:
        return is_heldout(self.id)


def is_heldout(dialogue_id: str) -> bool:
    """~10% of ids, by a stable hash (not Python's salted hash())."""
    digest = hashlib.sha256(dialogue_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


def split(items: Sequence[Dialogue]) -> tuple[list[Dialogue], list[Dialogue]]:
    """(train, held-out), each in corpus order."""
    return [d for d in items if not d.heldout], [d for d in items if d.heldout]


def parse_script(lines: Sequence[str]) -> tuple[Turn, ...]:
    """``["A+: ...", "B: ..."]`` -> turns; speakers must alternate, 2-6 turns."""
    turns = []
    for line in lines:
        head, sep, text = line.partition(":")
        if not sep or not head or head[0] not in "AB" or set(head[1:]) - {"+", "~"}:
            raise ValueError(f"bad script line {line!r}")
        speaker: Speaker = "A" if head[0] == "A" else "B"
        turns.append(Turn(speaker, text.strip(), "+" in head, "~" in head))
    if not 2 <= len(turns) <= 6:
        raise ValueError(f"a dialogue has 2-6 turns, got {len(turns)}: {lines}")
    if any(a.speaker == b.speaker for a, b in zip(turns, turns[1:], strict=False)):
        raise ValueError(f"speakers must alternate: {lines}")
    return tuple(turns)


_HAND: dict[str, list[list[str]]] = {
    "greeting": [
        ["A: Hi there!", "B: Oh, hi! I didn't see you come in.", "A: I just got here."],
        ["A: Good morning.", "B: Morning. Did you sleep well?", "A: Not really, the neighbours "
         "were having a party.", "B: Oh no, that's annoying."],
        ["A: Hey, long time no see!", "B: I know, it's been ages. How have you been?",
         "A+: Pretty good, actually. I started a new job in March, and I really like it.",
         "B: That's great news."],
        ["A: Hello, is anyone there?", "B: Yes, hello, sorry, I was on mute.",
         "A: No problem."],
        ["A: Nice to meet you.", "B: Nice to meet you too. I've heard a lot about you.",
         "A: Only good things, I hope.", "B: Of course!"],
        ["A: Hi, how's it going?", "B: Not bad. You?", "A: Can't complain."],
        ["A: Good evening, thanks for calling.", "B: Hi, good evening.",
         "A: How can I help you tonight?"],
        ["A: Bye for now!", "B: Bye, take care.", "A: You too, talk soon."],
    ],
    "smalltalk": [
        ["A+: So I finally watched that film you told me about, and honestly, I loved it.",
         "B: Told you! The ending is amazing.", "A: I didn't see it coming at all."],
        ["A: Did you do anything fun this weekend?", "B+: Not much. I cleaned the flat, "
         "went for a run, and then I just slept.", "A: Sounds relaxing."],
        ["A: How was your holiday?", "B+: Wonderful. We stayed by the sea, the food was "
         "great, and it didn't rain once.", "A: Lucky you.", "B: I know, I want to go back."],
        ["A~: I've been reading this book about the history of coffee, and it turns out that",
         "B: Wait, there's a whole book about coffee?", "A: Yes, and it's really good!"],
        ["A: Your garden looks lovely.", "B: Thanks, I spend every Sunday out there.",
         "A: It shows."],
        ["A: Are you a morning person?", "B: Not at all. I need two coffees before I can "
         "talk.", "A: Same here."],
        ["A+: My cat knocked a glass off the table this morning, then she just sat there "
         "looking at me.", "B: Cats are like that.", "A: She didn't even say sorry."],
        ["A: Have you tried the new bakery?", "B: Not yet. Is it good?",
         "A: Their bread is the best in town.", "B: Then I'll go tomorrow."],
    ],
    "time": [
        ["A: Excuse me, do you know what time it is?", "B: It's just after four.",
         "A: Thanks."],
        ["A: What time does the shop close?", "B: At eight, I think.",
         "A: Great, so we have an hour."],
        ["A: How long have you been waiting?", "B: About twenty minutes.",
         "A: I'm so sorry, the bus was late."],
        ["A: When is your flight?", "B: Early tomorrow morning, at six fifteen.",
         "A: That's early! When do you have to leave?", "B: Around four."],
        ["A~: The film starts at half past seven, so if we leave at seven we should",
         "B: Half past seven? I thought it was eight.", "A: No, they changed it."],
        ["A: Is it too late to call?", "B: No, it's fine, I'm still up."],
    ],
    "weather": [
        ["A: Is it still raining?", "B: Yes, it's pouring.", "A: Then I'll take the car."],
        ["A: What a beautiful day!", "B: Isn't it? Finally some sun.",
         "A: Let's eat outside."],
        ["A+: The forecast says it'll be windy in the morning, but in the afternoon it "
         "should clear up.", "B: Good, I want to go cycling."],
        ["A: Do I need an umbrella?", "B: I would take one, just in case."],
        ["A: It's freezing in here.", "B: Sorry, the heating is broken.",
         "A: Can I borrow a jumper?", "B: Sure, there's one on the chair."],
        ["A~: They said it would snow tonight, and then tomorrow it might",
         "B: Snow? Really? In April?", "A: I know, it's crazy."],
    ],
    "plans": [
        ["A: What are you doing tonight?", "B: Nothing much, why?",
         "A: Do you want to come for dinner?", "B: I'd love to."],
        ["A+: I was thinking we could leave early on Saturday, drive to the lake, and have "
         "lunch there.", "B: That sounds perfect.", "A: I'll bring the sandwiches."],
        ["A: Are we still meeting tomorrow?", "B: Yes, ten o'clock at the office.",
         "A: See you then."],
        ["A~: So the plan is, first we pick up the keys, then we go to the flat and",
         "B: Sorry, who has the keys?", "A: Maria does.", "B: Okay, go on."],
        ["A: Can we move our meeting to Friday?", "B: Friday works for me.",
         "A: Morning or afternoon?", "B: Afternoon, please."],
        ["A: Let's go to the beach this weekend.", "B: Only if it's warm.",
         "A: It's going to be hot, I checked."],
    ],
    "numbers": [
        ["A: How many people are coming?", "B: Twelve, maybe thirteen.",
         "A: I'll get fifteen chairs, to be safe."],
        ["A: What's your room number?", "B: Four hundred and six.",
         "A: Four oh six, got it."],
        ["A: How much was the taxi?", "B: Twenty three pounds.", "A: That's not bad."],
        ["A+: The code for the door is seven, two, nine, and then you press the star key.",
         "B: Seven two nine, star.", "A: Exactly."],
        ["A: How old is your son now?", "B: He turned nine last week.",
         "A: Time flies!"],
        ["A: What floor are you on?", "B: The third floor, at the end of the corridor."],
    ],
    "names": [
        ["A: What's your name?", "B: I'm Hiro.", "A: Nice to meet you, Hiro. I'm Kate."],
        ["A: Sorry, how do you spell that?", "B: P, R, I, Y, A.", "A: Thank you."],
        ["A: Who's that over there?", "B: That's my cousin, Diego.",
         "A: Oh, I thought it was your brother."],
        ["A: Can I take your name for the booking?", "B: Yes, it's Olivia Brown.",
         "A: Thank you, Miss Brown."],
        ["A~: I'm calling on behalf of my colleague, his name is",
         "B: Sorry, could you speak up a little?", "A: My colleague, Frank Miller."],
        ["A: What should we call the dog?", "B: How about Biscuit?",
         "A: I love it."],
    ],
    "requests": [
        ["A: Could you pass me the salt?", "B: Here you go.", "A: Thanks."],
        ["A: Would you mind closing the window?", "B: Not at all.",
         "A: Thank you, it's a bit cold."],
        ["A: Can you help me carry these boxes?", "B: Sure, where do they go?",
         "A: Up to the second floor.", "B: Okay, let's do it."],
        ["A+: Could you send me the report today, and maybe copy in Sam as well?",
         "B: Of course, I'll do it before lunch."],
        ["A: Can I borrow your charger?", "B: Sorry, I left it at home.",
         "A: Never mind."],
        ["A~: I need you to call the bank, ask them about the payment, and then",
         "B: Hang on, let me write this down.", "A: Sure, take your time."],
    ],
    "confirmations": [
        ["A: So that's two coffees and a tea?", "B: That's right.",
         "A: Coming right up."],
        ["A: You said Tuesday, right?", "B: Yes, Tuesday at three."],
        ["A: Did you lock the door?", "B: I think so.", "A: You think so?",
         "B: Okay, I'll go and check."],
        ["A: Is this seat free?", "B: Yes, go ahead."],
        ["A: Just to confirm, your address is twelve Park Road?",
         "B: No, twenty Park Road.", "A: Sorry, twenty. Thanks."],
        ["A: We're all set for the party, aren't we?", "B: Yep, everything's ready.",
         "A: Perfect."],
    ],
}  # fmt: skip


class _Pick:
    """Seeded slot values for the templates."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, *options: str) -> str:
        return options[int(self.rng.integers(len(options)))]

    def of(self, options: Sequence[str]) -> str:
        return self(*options)

    def name(self) -> str:
        return self.of(NAMES + _MORE_NAMES)

    def two_names(self) -> tuple[str, str]:
        names = NAMES + _MORE_NAMES
        i, j = self.rng.choice(len(names), 2, replace=False)
        return names[int(i)], names[int(j)]

    def number(self, lo: int, hi: int) -> str:
        return number_words(int(self.rng.integers(lo, hi + 1)))

    def clock(self) -> str:
        hour = number_words(int(self.rng.integers(1, 13)))
        minute = int(self.rng.integers(0, 12)) * 5
        if minute == 0:
            return self(f"{hour} o'clock", f"{hour}")
        if minute in (15, 30, 45):
            return self(
                {15: f"a quarter past {hour}", 30: f"half past {hour}"}.get(
                    minute, f"{hour} forty-five"
                ),
                f"{hour} {number_words(minute)}",
            )
        return f"{hour} {'' if minute > 9 else 'oh '}{number_words(minute)}"

    def digits(self, n: int) -> str:
        return ", ".join(number_words(int(d)) for d in self.rng.integers(0, 10, n))

    def day(self) -> str:
        return self.of(DAYS)

    def place(self) -> str:
        return self.of(PLACES)

    def food(self) -> str:
        return self.of(FOODS)

    def activity(self) -> str:
        return self.of(ACTIVITIES)

    def weather(self) -> str:
        return self.of(_WEATHERS)

    def ack(self) -> str:
        return self("Okay.", "Alright.", "Great.", "Perfect.", "Got it.", "Sounds good.")

    def thanks(self) -> str:
        return self("Thanks.", "Thank you.", "Thanks a lot.", "Cheers.", "Thank you so much.")


_MORE_NAMES = ("Oliver", "Chloe", "Daniel", "Fatima", "George", "Helen", "Ivan", "Julia",
               "Kenji", "Laura", "Mohammed", "Nina", "Oscar", "Paula", "Rosa")  # fmt: skip
_WEATHERS = ("sunny", "cloudy", "rainy", "windy", "cold", "warm", "hot", "foggy", "stormy")
_CITIES = ("London", "Paris", "Madrid", "Berlin", "Tokyo", "Chicago", "Dublin", "Rome",
           "Sydney", "Toronto", "Lisbon", "Boston")  # fmt: skip
_ITEMS = ("a coffee", "a sandwich", "two tickets", "a bottle of water", "a new charger",
          "a pair of shoes", "a birthday card", "some bread", "a phone case")  # fmt: skip
_Template = Callable[[_Pick], list[str]]


def _greet(p: _Pick) -> list[str]:
    a, b = p.two_names()
    part = p("morning", "afternoon", "evening")
    return [
        f"A: {p('Hi', 'Hello', 'Hey', f'Good {part}')}, {b}! {p('How are you?', 'How are things?', 'How are you doing?', 'How have you been?')}",  # noqa: E501
        f"B: {p('Fine, thanks.', 'Pretty good.', 'Not too bad.', 'Great, thanks!')} {p('And you?', 'How about you?', 'What about you?')}",  # noqa: E501
        f"A: {p('I am well, thanks.', 'Good, good.', 'A bit tired, but fine.', 'Busy, as always.')}",  # noqa: E501
    ] + (
        [f"B: {p('Glad to hear it', 'Nice to see you', 'Good to hear')}, {a}."]
        if p("y", "n") == "y"
        else []
    )  # noqa: E501


def _phone_greet(p: _Pick) -> list[str]:
    a, b = p.two_names()
    return [
        f"A: {p('Hello', 'Hi', 'Hello there')}, is that {b}?",
        f"B: {p('Yes, speaking.', 'Yes, it is.', 'Speaking, who is this?')}",
        f"A: {p('Hi', 'Hello')}, it's {a}. {p('Have you got a minute?', 'Is now a good time?', 'Am I calling too late?')}",  # noqa: E501
        f"B: {p('Sure, go ahead.', 'Of course.', 'Yes, no problem.', 'Sorry, I only have a minute.')}",  # noqa: E501
    ]


def _how_was(p: _Pick) -> list[str]:
    day = p("day", "weekend", "trip", "week", "morning")
    return [
        f"A: How was your {day}?",
        f"B+: {p('Long', 'Busy', 'Lovely', 'Quiet')}. I had to {p.activity()}, "
        f"and then I {p('met', 'called', 'ran into', 'had lunch with')} {p.name()} "
        f"{p('at', 'near')} {p.place()}.",
        f"A: {p('Oh, nice.', 'Sounds like a lot.', 'How is she doing?', 'Did you have fun?')}",
    ]


def _smalltalk_food(p: _Pick) -> list[str]:
    return [
        f"A: {p('What did you have for lunch?', 'Did you eat yet?', 'What are you having tonight?')}",  # noqa: E501
        f"B: {p('Just', 'Only', 'I had')} {p.food()}. {p('You?', 'What about you?', 'And you?')}",
        f"A: {p('I had', 'I am making', 'I want')} {p.food()}{p('.', ', I think.', ', as usual.')}",  # noqa: E501
    ] + (
        ["B: " + p("Yum.", "Sounds good.", "Nice.", "Save me some!")] if p("y", "n") == "y" else []
    )  # noqa: E501


def _ask_time(p: _Pick) -> list[str]:
    return [
        f"A: {p('Excuse me', 'Sorry', 'Hey')}, {p('what time is it?', 'do you have the time?', 'what is the time?')}",  # noqa: E501
        f"B: It's {p.clock()}{p('.', ' exactly.', ', I think.', ' already.')}",
        f"A: {p.thanks()} {p('I am late.', 'Still early, then.', 'I have to go.', '')}".rstrip(),
    ]


def _when_opens(p: _Pick) -> list[str]:
    what = p("the pharmacy", "the museum", "the bank", "the pool", "the library", "the shop")
    return [
        f"A: When does {what} {p('open', 'close')} {p.day()}?",
        f"B: {p('At', 'I think at', 'Usually at', 'Around')} {p.clock()}.",
        f"A: {p('And', 'What about', 'Is it the same')} on {p('Sunday', 'Saturday', 'the holiday')}?",  # noqa: E501
        f"B: {p('No, it is closed.', 'Same time, I believe.', 'I am not sure, sorry.', 'An hour later.')}",  # noqa: E501
    ]


def _how_long(p: _Pick) -> list[str]:
    return [
        f"A: How long does it take to get to {p.place()}?",
        f"B: {p('About', 'Around', 'Maybe', 'Less than')} {p.number(5, 50)} minutes "
        f"{p('by bus', 'on foot', 'by car', 'by bike')}.",
        f"A~: {p('Okay, so if I leave at', 'So if I go at', 'Right, so leaving at')} {p.clock()}, I should",  # noqa: E501
        f"B: {p('You will be fine.', 'Leave a bit earlier.', 'Wait, is it rush hour then?')}",
    ]


def _weather_ask(p: _Pick) -> list[str]:
    city = p.of(_CITIES)
    return [
        f"A: {p('What is the weather like in', 'How is the weather in', 'Is it nice in')} {city}?",  # noqa: E501
        f"B: {p('It is', 'Pretty', 'Very', 'Quite')} {p.weather()} {p('today', 'right now', 'this week')}.",  # noqa: E501
        f"A: {p('Here too.', 'Lucky you.', 'It is the opposite here.', 'Really? It was', 'Same as yesterday then.')}",  # noqa: E501
    ]


def _forecast(p: _Pick) -> list[str]:
    return [
        f"A+: {p('The forecast says', 'They said on the radio', 'Apparently')} it will be "
        f"{p.weather()} {p.day()}, {p('but', 'and then')} {p('later', 'in the evening', 'the next day')} "  # noqa: E501
        f"it {p('might', 'should', 'will probably')} get {p.weather()}.",
        f"B: {p('So, no picnic?', 'Good to know.', 'I will bring a coat.', 'Typical.')}",
        f"A: {p('Maybe next week.', 'Probably not.', 'Better safe than sorry.', 'Yeah.')}",
    ]


def _umbrella(p: _Pick) -> list[str]:
    return [
        f"A: {p('Should I', 'Do I need to', 'Do you think I should')} take {p('an umbrella', 'a jacket', 'sunscreen', 'a scarf')}?",  # noqa: E501
        f"B: {p('Yes,', 'Definitely,', 'I would,', 'No,')} it is {p.weather()} {p('outside', 'out there', 'today')}.",  # noqa: E501
    ] + ([f"A: {p.ack()}"] if p("y", "n") == "y" else [])


def _invite(p: _Pick) -> list[str]:
    lines = [
        f"A: {p('Do you want to', 'Would you like to', 'Shall we', 'Fancy going to')} {p.activity()} {p.day()}?",  # noqa: E501
    ]
    if p("y", "n") == "n":
        return lines + [
            f"B: {p('Sorry, I can not.', 'I am busy then, sorry.', 'Maybe another time.')} I have to {p.activity()}.",  # noqa: E501
            f"A: {p('No worries.', 'Okay, next time then.', 'That is a shame.')}",
        ]
    return lines + [
        f"B: {p('I would love to!', 'Sure, why not.', 'Sounds fun.')}",
        f"A: {p('Great', 'Cool', 'Perfect')}, {p('let us say', 'how about', 'shall we say')} {p.clock()}?",  # noqa: E501
        f"B: {p('See you then.', 'Works for me.', 'Deal.')}",
    ]


def _plan_meeting(p: _Pick) -> list[str]:
    return [
        f"A: {p('When', 'Where', 'What time')} {p('shall we meet', 'are we meeting', 'should we meet up')}?",  # noqa: E501
        f"B+: {p('How about', 'What about', 'Let us say')} {p.place()}, {p.day()} at {p.clock()}?",  # noqa: E501
        f"A: {p('That works.', 'Could we make it later?', 'Perfect.', 'Hmm, can we do earlier?')}",
        f"B: {p('Sure.', 'No problem.', 'Okay, just text me.', 'Fine by me.')}",
    ]


def _plan_interrupted(p: _Pick) -> list[str]:
    return [
        f"A~: {p('So', 'Okay so', 'Right so')} {p.day()} I will {p.activity()}, then we {p('can', 'could')} {p.activity()} and after that",  # noqa: E501
        f"B: {p('Wait', 'Hold on', 'Sorry', 'Hang on')}, {p('what time?', 'which day?', 'where?', 'say that again?')}",  # noqa: E501
        f"A: {p.day().capitalize()}, {p('around', 'at', 'from')} {p.clock()}.",
        f"B: {p.ack()}",
    ]


def _count(p: _Pick) -> list[str]:
    thing = p("people", "boxes", "chairs", "tickets", "plates", "cups")
    return [
        f"A: How many {thing} {p('do we need', 'are there', 'did you get', 'should I bring')}?",
        f"B: {p('', 'I think ', 'About ', 'Exactly ')}{p.number(2, 40)}{p('.', ', maybe more.', ', give or take.')}",  # noqa: E501
        f"A: {p('Okay,', 'Really?', 'Alright,', 'Hmm,')} {p('that is a lot.', 'I will count again.', 'that should be enough.', 'I thought fewer.')}",  # noqa: E501
    ]


def _price(p: _Pick) -> list[str]:
    item = p.of(_ITEMS)
    return [
        f"A: How much {p('is', 'was', 'does it cost for')} {item}?",
        f"B: {p.number(2, 90)} {p('dollars', 'pounds', 'euros')}{p('.', ' and fifty cents.', ', I think.')}",  # noqa: E501
        f"A: {p('That is cheap.', 'That is expensive.', 'Not bad.', 'Wow.')}",
    ] + ([f"B: {p('I know.', 'Right?', 'Tell me about it.')}"] if p("y", "n") == "y" else [])


def _phone_number(p: _Pick) -> list[str]:
    first, second = p.digits(3), p.digits(4)
    return [
        f"A: {p('What is your number?', 'Can I have your phone number?', 'Could you give me your number?')}",  # noqa: E501
        f"B+: {p('Sure, it is', 'It is', 'Yes,')} {first}, {second}.",
        f"A: {first}, {second}?",
        f"B: {p('That is right.', 'Yes.', 'Exactly.', 'Correct.')}",
    ]


def _number_correction(p: _Pick) -> list[str]:
    n, m = sorted(int(x) for x in p.rng.choice(np.arange(10, 99), 2, replace=False))
    return [
        f"A~: {p('So the total is', 'The room is number', 'Your seat is', 'It is bus number')} {number_words(n)}, and",  # noqa: E501
        f"B: {p('No,', 'Sorry,', 'Actually,')} {number_words(m)}.",
        f"A: {p('Oh,', 'Ah,', 'Sorry,')} {number_words(m)}. {p.thanks()}",
    ]


def _ask_name(p: _Pick) -> list[str]:
    a, b = p.two_names()
    return [
        f"A: {p('Sorry, what was your name again?', 'What is your name?', 'And you are?', 'May I ask your name?')}",  # noqa: E501
        f"B: {p('I am', 'It is', 'My name is', 'Call me')} {b}.",
        f"A: {p('Nice to meet you', 'Hi', 'Pleased to meet you', 'Welcome')}, {b}. {p('I am', 'My name is')} {a}.",  # noqa: E501
    ] + (
        [f"B: {p('Nice to meet you too.', 'Hi', 'Hello')}{'' if p('y', 'n') == 'y' else ', ' + a}."]
        if p("y", "n") == "y"
        else []
    )  # noqa: E501


def _who_is(p: _Pick) -> list[str]:
    a, b = p.two_names()
    return [
        f"A: {p('Who is', 'Do you know', 'Have you met')} {a}?",
        f"B: {p('Yes,', 'Sure,', 'Of course,')} {p('she', 'he')} {p('works with', 'lives next to', 'went to school with', 'plays football with')} {b}.",  # noqa: E501
        f"A: {p('Oh, I see.', 'Small world.', 'Ah, that explains it.', 'I did not know that.')}",
    ]


def _spell(p: _Pick) -> list[str]:
    name = p.name()
    return [
        f"A: {p('How do you spell', 'Could you spell', 'Can you spell')} {name}?",
        f"B+: {', '.join(name.upper())}.",
        f"A: {p.thanks()}",
    ]


def _request(p: _Pick) -> list[str]:
    ask = p(
        "pass me the water",
        "open the door",
        "turn the music down",
        "call me later",
        "send me the address",
        "wait for me",
        "check the time",
        "buy some milk",
    )
    return [
        f"A: {p('Could you', 'Can you', 'Would you', 'Would you mind if you could')} {ask}{p(', please', '')}?",  # noqa: E501
        f"B: {p('Sure.', 'Of course.', 'No problem.', 'Give me a second.', 'Sorry, not right now.')}",  # noqa: E501
    ] + ([f"A: {p.thanks()}"] if p("y", "n") == "y" else [])


def _shopping_request(p: _Pick) -> list[str]:
    return [
        f"A+: {p('When you go to the shop,', 'If you pass the market,', 'On your way home,')} "
        f"{p('could you get', 'can you pick up', 'please buy')} {p.of(_ITEMS)} and {p.of(_ITEMS)}?",  # noqa: E501
        f"B: {p('Sure, anything else?', 'Okay, is that all?', 'Fine, but I am not carrying much.')}",  # noqa: E501
        f"A: {p('No, that is all.', 'Maybe', 'Oh, and')} {p.food()}{p('.', ', if they have it.')}",
        f"B: {p.ack()}",
    ]


def _favour_interrupted(p: _Pick) -> list[str]:
    return [
        f"A~: {p('Could you do me a favour', 'Can I ask you something', 'I need a favour')}, {p('tomorrow', p.day())} I have to {p.activity()} and",  # noqa: E501
        f"B: {p('Sure, what do you need?', 'Of course, anything.', 'Let me guess, the car?')}",
        f"A: {p('Can you', 'Could you')} {p.activity()} {p('for me', 'instead', 'with Sam')}?",
        f"B: {p('No problem.', 'I will try.', 'Fine, but you owe me.')}",
    ]


def _confirm_booking(p: _Pick) -> list[str]:
    n = p.number(2, 9)
    return [
        f"A: {p('Just to confirm', 'So', 'Let me check')}, a table for {n} {p.day()} at {p.clock()}?",  # noqa: E501
        f"B: {p('Yes, that is right.', 'Exactly.', 'Yes, please.', 'Correct.')}",
        f"A: {p('And the name?', 'Under what name?', 'Could I have a name?')}",
        f"B: {p.name()}.",
        f"A: {p('Thank you', 'Great', 'Perfect')}, {p('see you then.', 'it is booked.', 'all done.')}",  # noqa: E501
    ]


def _confirm_yes_no(p: _Pick) -> list[str]:
    q = p(
        f"you will be at {p.place()} {p.day()}",
        f"the meeting is at {p.clock()}",
        f"{p.name()} is coming too",
        f"we are having {p.food()} for dinner",
        f"you already {p('booked the tickets', 'called the doctor', 'paid the bill')}",
    )
    return [
        f"A: {p('So', 'Okay, so', 'Just checking,')} {q}, {p('right?', 'yes?', 'is that right?', 'correct?')}",  # noqa: E501
        f"B: {p('Yes.', 'Yep.', 'That is right.', 'No, not anymore.', 'Actually, no.')}",
    ] + ([f"A: {p.ack()}"] if p("y", "n") == "y" else [])


def _directions(p: _Pick) -> list[str]:
    return [
        f"A: {p('Excuse me, how do I get to', 'Sorry, where is', 'Do you know the way to')} {p.place()}?",  # noqa: E501
        f"B+: {p('Go straight', 'Turn left', 'Turn right', 'Walk down this road')} for {p.number(2, 6)} blocks, "  # noqa: E501
        f"then {p('turn left', 'turn right', 'cross the bridge')} at the {p('lights', 'church', 'bakery')}. "  # noqa: E501
        f"{p('You can not miss it.', 'It is on your left.', 'It is right there.')}",
        f"A: {p.thanks()}",
    ]


def _backchannel_story(p: _Pick) -> list[str]:
    return [
        f"A+: {p('You will never guess what happened.', 'So, guess what.', 'Listen to this.')} "
        f"{p.name()} {p('lost', 'found', 'broke')} {p('her phone', 'his keys', 'the car keys', 'a wallet')} "  # noqa: E501
        f"at {p.place()}, {p('and then', 'so')} we {p('spent an hour looking', 'had to call the police', 'laughed about it for ages')}.",  # noqa: E501
        f"B: {p('No way!', 'Oh no.', 'Seriously?', 'Typical.')}",
        f"A: {p('Yes, really.', 'I know.', 'Honestly.')}",
    ]


def _correction_interrupt(p: _Pick) -> list[str]:
    a, b = p.two_names()
    return [
        f"A~: {p('I told', 'I asked', 'I think')} {a} {p('to meet us at', 'to wait at', 'to go to')} {p.place()} and then",  # noqa: E501
        f"B: {p('Wait,', 'Sorry,', 'Hang on,')} {p('not', 'I thought it was')} {b}?",
        f"A: {p('No,', 'Yes,', 'Oh,')} {p(a, b)}. {p('Sorry.', 'Anyway.', 'Same thing.')}",
    ]


def _backchannel_turn(p: _Pick) -> list[str]:
    """A turn that is itself a backchannel, then the speaker carries on."""
    return [
        f"A: {p('I finally finished', 'I started', 'I gave up on')} {p('the report', 'my thesis', 'the painting', 'the puzzle')}.",  # noqa: E501
        f"B: {p.of(BACKCHANNELS)}",
        f"A+: {p('It took', 'It has taken', 'That took')} {p.number(2, 12)} {p('weeks', 'days', 'months')}, "  # noqa: E501
        f"{p('but it was worth it', 'and I am exhausted', 'I do not want to see it again')}.",
        f"B: {p('Well done.', 'Congratulations.', 'I can imagine.', 'Time to celebrate.')}",
    ]


_TEMPLATES: dict[str, list[_Template]] = {
    "greeting": [_greet, _phone_greet],
    "smalltalk": [_how_was, _smalltalk_food, _backchannel_story, _backchannel_turn],
    "time": [_ask_time, _when_opens, _how_long],
    "weather": [_weather_ask, _forecast, _umbrella],
    "plans": [_invite, _plan_meeting, _plan_interrupted],
    "numbers": [_count, _price, _phone_number, _number_correction],
    "names": [_ask_name, _who_is, _spell, _correction_interrupt],
    "requests": [_request, _shopping_request, _favour_interrupted],
    "confirmations": [_confirm_booking, _confirm_yes_no],
    "directions": [_directions],
}


def dialogues(seed: int = 0, per_template: int = PER_TEMPLATE) -> list[Dialogue]:
    """The whole corpus: hand-written, then `per_template` distinct expansions per template."""
    out = [
        Dialogue(f"{topic}-h{i:02d}", topic, parse_script(lines))
        for topic, scripts in _HAND.items()
        for i, lines in enumerate(scripts)
    ]
    seen = {d.turns for d in out}
    rng = np.random.default_rng(seed)
    pick = _Pick(rng)
    for topic, templates in _TEMPLATES.items():
        for t, template in enumerate(templates):
            made = 0
            for _attempt in range(per_template * 20):
                turns = parse_script(template(pick))
                if turns in seen:
                    continue
                seen.add(turns)
                out.append(Dialogue(f"{topic}-t{t}-{made:03d}", topic, turns))
                made += 1
                if made == per_template:
                    break
    return out
