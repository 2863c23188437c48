"""Offline English speech from espeak-ng: voices, speaking rates, and things to say.

The codebook build, data synthesis and the measurement clients all speak through this, so
their voices and texts come from one place (seeded: the same rng gives the same text).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import numpy as np
from scipy.signal import resample_poly

VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en+m3", "en-gb-x-rp+f4")
WPM_RANGE = (140, 190)
PITCH_RANGE = (35, 65)
_ESPEAK_RATE = 22050

NAMES = (
    "Anna", "Ben", "Carlos", "Diana", "Emma", "Frank", "Grace", "Hiro", "Isabel", "Jack",
    "Kate", "Liam", "Maria", "Noah", "Olivia", "Priya", "Sam", "Tom", "Yusuf", "Zoe",
)  # fmt: skip
PLACES = (
    "the station", "the office", "the park", "the library", "the airport", "the market",
    "the gym", "the cafe on Main Street", "my place", "the hospital", "the cinema", "school",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
         "tomorrow", "tonight", "this weekend", "next week", "this afternoon")  # fmt: skip
_WEATHER = ("sunny", "cloudy", "rainy", "windy", "freezing", "really hot", "foggy", "mild")
FOODS = ("pizza", "pasta", "sushi", "a sandwich", "soup", "coffee", "tea", "a salad",
          "pancakes", "curry", "some fruit", "chocolate cake")  # fmt: skip
ACTIVITIES = ("go for a walk", "watch a movie", "call my mother", "finish the report",
               "clean the kitchen", "go shopping", "play football", "read a book",
               "fix the bike", "visit my friends", "book the tickets", "cook dinner")  # fmt: skip
_BACKCHANNELS = ("Yeah.", "Uh huh.", "Okay.", "Right.", "Sure.", "Mm hmm.", "Oh really?",
                 "I see.", "Got it.", "No way!", "Exactly.", "Hmm, maybe.", "Well, okay.",
                 "Oh, nice.", "Sounds good.", "Thanks a lot!", "You know what I mean?")  # fmt: skip
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve")  # fmt: skip
_TEMPLATES = (
    "Hello {name}, how are you doing today?",
    "Good {part}, {name}! It's nice to hear from you.",
    "Hi, this is {name}. Do you have a minute?",
    "It's {hour} {minute} right now.",
    "The meeting starts at {hour} o'clock {day}.",
    "Could you meet me at {place} at a quarter past {hour}?",
    "I'll be there in about {num} minutes.",
    "It's going to be {weather} {day}, so take a jacket.",
    "The weather was {weather} all day yesterday.",
    "What's the weather like where you are?",
    "My phone number is {digits}.",
    "That costs {num} dollars and {num2} cents.",
    "There are {num} people waiting at {place}.",
    "I was thinking we could {activity} {day}.",
    "Do you want to {activity} with me {day}?",
    "I have to {activity} before {hour} o'clock.",
    "{name} said she would {activity} after work.",
    "Have you eaten yet? I could really go for {food}.",
    "For lunch I had {food} and {food2}.",
    "Where did you put the keys? I can't find them anywhere.",
    "Can you repeat that, please? The line is a bit noisy.",
    "Sorry, I didn't catch your name.",
    "Why don't we ask {name} and {name2} to join us?",
    "How long does it take to get to {place}?",
    "Turn left at the second light and keep going for {num} blocks.",
    "Honestly, I think that's a great idea.",
    "I'm not sure, let me check my calendar.",
    "We should leave by {hour} {minute} at the latest.",
    "Is it okay if I call you back in {num} minutes?",
    "Well, um, I guess it depends on the traffic.",
    "Did you hear what happened to {name} {day}?",
    "Happy birthday, {name}! You're {age} years old today!",
    "The train to the city leaves from platform {small}.",
    "Please remind me to {activity} {day}.",
)


def number_words(n: int) -> str:
    """0-99 in words, so espeak's output does not depend on its number parser."""
    tens = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
    teens = ("thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
    if n <= 12:
        return _ONES[n]
    if n < 20:
        return teens[n - 13]
    return tens[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])


def sentence(rng: np.random.Generator) -> str:
    if rng.random() < 0.15:
        return str(rng.choice(_BACKCHANNELS))

    def pick(options: tuple[str, ...]) -> str:
        return str(options[int(rng.integers(len(options)))])

    minute = int(rng.integers(0, 12)) * 5
    slots = {
        "name": pick(NAMES), "name2": pick(NAMES), "place": pick(PLACES), "day": pick(DAYS),
        "weather": pick(_WEATHER), "food": pick(FOODS), "food2": pick(FOODS),
        "activity": pick(ACTIVITIES), "part": pick(("morning", "afternoon", "evening")),
        "hour": _ONES[int(rng.integers(1, 13))],
        "minute": "o'clock" if minute == 0 else number_words(minute),
        "num": number_words(int(rng.integers(2, 100))),
        "num2": number_words(int(rng.integers(1, 100))),
        "age": number_words(int(rng.integers(5, 90))),
        "small": _ONES[int(rng.integers(1, 13))],
        "digits": ", ".join(" ".join(_ONES[int(d)] for d in rng.integers(0, 10, 3)) for _ in "ab"),
    }  # fmt: skip
    return pick(_TEMPLATES).format(**slots)


def paragraphs(rng: np.random.Generator) -> Iterator[tuple[str, str, int, int]]:
    """Endless (text, voice, wpm, pitch) items: a few sentences by one speaker."""
    while True:
        text = " ".join(sentence(rng) for _ in range(int(rng.integers(2, 7))))
        voice = VOICES[int(rng.integers(len(VOICES)))]
        yield (
            text,
            voice,
            int(rng.integers(WPM_RANGE[0], WPM_RANGE[1] + 1)),
            int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        )


def synthesize(text: str, voice: str = "en-us", wpm: int = 165, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech resampled to the codec's 8 kHz, float32 in [-1, 1]."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    # espeak streams a 44-byte RIFF header (sizes left unset) then 16-bit mono PCM.
    if (
        wav[:4] != b"RIFF"
        or wav[36:40] != b"data"
        or int.from_bytes(wav[24:28], "little") != _ESPEAK_RATE
    ):
        raise RuntimeError(f"unexpected espeak-ng output header: {wav[:44]!r}")
    pcm = np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], dtype="<i2").astype(np.float64)
    return resample_poly(pcm / 32768.0, 160, 441).astype(np.float32)
