"""Write data/stories.txt, the storyteller's training corpus: short children's stories from a seeded
grammar, so the corpus is the project's own text (no licence to track) and the same on every machine.

    python make_stories.py              # rewrites data/stories.txt (what is committed)
    python make_stories.py --check      # exits 1 if data/stories.txt is not what this script writes

The file is committed, not generated at training time: a training run must read exactly the bytes
that were reviewed. Each story has a hero (a name, a kind of creature, pronouns), a friend, a place,
an object and one of several plots (something lost, a journey, a storm, a fear of the dark, a gift, a
contest, a new friend, a broken thing), told with alternative sentences for every beat and lines of
dialogue, and ends with one of several endings. Stories are separated by a line ``<|endoftext|>``,
the tokenizer's document separator. Only ``random.Random(seed)`` decides, so the output is identical
for the same seed and count.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "data" / "stories.txt"
SEPARATOR = "<|endoftext|>"
SEED = 20251206
COUNT = 900

NAMES = {
    "she": ["Mia", "Lily", "Emma", "Rosa", "Nina", "Zoe", "Anna", "Lucy", "Ella", "Maya", "Ivy", "Ruby",
            "Sara", "Hana", "Clara", "Nora", "Tess", "Alice", "Poppy", "Daisy"],
    "he": ["Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Finn", "Oscar", "Noah", "Theo", "Hugo", "Eli",
           "Milo", "Otto", "Felix", "Jonas", "Pablo", "Ravi", "Kai", "Toby"],
}
KINDS = ["little girl", "little boy", "fox", "rabbit", "bear cub", "duck", "kitten", "puppy", "mouse",
         "owl", "turtle", "squirrel", "frog", "hedgehog", "lamb", "penguin", "robot", "dragon", "pig",
         "goat", "crow", "otter", "badger", "deer"]
GIRL_BOY = {"little girl": "she", "little boy": "he"}
TRAITS = ["brave", "shy", "curious", "kind", "clever", "small", "happy", "sleepy", "busy", "gentle",
          "funny", "careful", "quiet", "cheerful", "young", "friendly"]
PLACES = [
    ("a small village by the sea", "the beach"), ("a quiet green forest", "the big oak tree"),
    ("on a farm near the hills", "the red barn"), ("a busy town", "the market square"),
    ("a castle on a mountain", "the tall tower"), ("a sunny meadow", "the old well"),
    ("a house at the edge of a lake", "the wooden dock"), ("a snowy valley", "the frozen pond"),
    ("a garden full of flowers", "the stone bench"), ("on a little island", "the lighthouse"),
    ("a park in the city", "the pond with the ducks"), ("a cottage in the woods", "the garden gate"),
]
OBJECTS = ["a red ball", "a shiny key", "an old map", "a blue kite", "a wooden boat", "a golden bell",
           "a soft blanket", "a small drum", "a green hat", "a box of crayons", "a jar of honey",
           "a silver spoon", "a paper lantern", "a toy train", "a smooth stone", "a little book"]
FOODS = ["apples", "berries", "bread", "carrots", "cookies", "soup", "cheese", "pancakes", "nuts", "cake"]
WEATHER = ["the sun was warm", "the wind was soft", "the sky was clear and blue", "the air smelled of rain",
           "the leaves were turning gold", "the snow was falling slowly", "the birds were singing"]
TIMES = ["One morning", "One day", "One sunny afternoon", "One cold evening", "Early one morning",
         "One rainy day", "Later that week", "On a bright spring day"]
OPENINGS = ["Once upon a time, there was {a_hero} who lived {place}.",
            "Once upon a time, {place}, there lived {a_hero}.",
            "Once upon a time, {a_hero} lived {place}.",
            "Long ago, {place}, there lived {a_hero}.",
            "There was once {a_hero} who lived {place}.",
            "{Place}, there lived {a_hero}."]
NIGHTS = ["One night", "Late one night", "One windy night", "One dark night", "One night in winter"]
FEELINGS_GOOD = ["happy", "proud", "glad", "warm inside", "very happy"]
FEELINGS_BAD = ["sad", "worried", "scared", "upset", "lonely"]


@dataclass
class Character:
    name: str
    kind: str
    trait: str
    they: str  # she / he

    @property
    def them(self) -> str:
        return "her" if self.they == "she" else "him"

    @property
    def their(self) -> str:
        return "her" if self.they == "she" else "his"

    @property
    def a(self) -> str:
        """'a curious fox named Pip'"""
        article = "an" if self.trait[0] in "aeiou" else "a"
        return f"{article} {self.trait} {self.kind} named {self.name}"


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def the(thing: str) -> str:
    """'a red ball' -> 'the red ball'."""
    return "the " + thing.split(" ", 1)[1]


def where(place: str) -> str:
    """'a busy town' -> 'in the busy town', 'on a farm near the hills' -> 'on the farm near the hills'."""
    words = place.split(" ")
    prep = words.pop(0) if words[0] in ("in", "on") else "in"
    return " ".join([prep, "the", *words[1:]])


def located(place: str) -> str:
    """'a busy town' -> 'in a busy town'; a place that names its preposition keeps it."""
    return place if place.split(" ", 1)[0] in ("in", "on") else "in " + place


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


class Teller:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: list[str] | tuple[str, ...]) -> str:
        return self.rng.choice(options)

    def character(self, avoid: str = "") -> Character:
        kind = self.pick(KINDS)
        they = GIRL_BOY.get(kind) or self.pick(["she", "he"])
        name = self.pick([n for n in NAMES[they] if n != avoid])
        return Character(name, kind, self.pick(TRAITS), they)

    def say(self, who: Character, line: str, verbs: tuple[str, ...] = ("said", "asked", "cried", "whispered")) -> str:
        verb = self.pick(list(verbs))
        if line.endswith("?") and "asked" in verbs:
            verb = "asked"
        elif not line.endswith("?") and verb == "asked":
            verb = "said"
        if self.rng.random() < 0.5:
            quoted = line[:-1] + "," if line.endswith(".") else line
            return f'"{quoted}" {verb} {who.name}.'
        return f'{who.name} {verb}, "{line}"'

    # -- plots: each returns the middle of a story as a list of sentences ------------------------------
    def lost(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        hiding = self.pick(["under a pile of leaves", "behind the old fence", "in a hole by the river",
                            "on the roof of the shed", "inside a hollow log", "under the bed",
                            "in the tall grass", "next to " + spot])
        return [
            f"{hero.name} had {thing} that {hero.they} loved very much.",
            f"{self.pick(TIMES)}, {hero.name} looked for {the(thing)}, but it was gone.",
            self.say(hero, self.pick([f"Where is my {thing.split(' ', 1)[1]}?", "Oh no, I lost it!",
                                      "Has anyone seen it?"])),
            f"{cap(hero.they)} felt {self.pick(FEELINGS_BAD)}.",
            f"{hero.name} went to see {hero.their} friend {friend.name} the {friend.kind}.",
            self.say(friend, self.pick(["Do not worry. I will help you look.", "Let us look together.",
                                        "Two friends can find anything!"]), ("said", "smiled")),
            f"They looked {self.pick(['near', 'behind', 'around'])} {spot}, "
            f"and they looked {self.pick(['in the kitchen', 'by the road', 'in the garden', 'under the bridge'])}.",
            f"At last, {friend.name} found {the(thing)} {hiding}.",
            self.say(hero, self.pick(["Thank you, my friend!", "You found it!", "Hooray!"]), ("cried", "said")),
            f"{hero.name} gave {friend.name} a big hug.",
        ]

    def journey(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        goal = self.pick(["the top of the hill", "the other side of the river", "the old mill",
                          "the edge of the forest", "the big waterfall", "the town across the valley"])
        obstacle, fix = self.pick([
            ("a wide river", "they found a fallen tree and walked across it"),
            ("a dark cave", f"{friend.name} lit a lantern and they walked through slowly"),
            ("a steep hill", "they climbed one step at a time and rested at the top"),
            ("a tall gate", f"{hero.name} used {the(thing)} to open it"),
            ("a deep mud puddle", "they jumped over it on some flat stones"),
            ("a thick fog", "they held hands and followed the sound of the bells"),
        ])
        return [
            f"{hero.name} always wanted to see {goal}.",
            f"{self.pick(TIMES)}, {hero.they} packed {the(thing)} and some {self.pick(FOODS)} in a bag.",
            self.say(hero, self.pick(["Today is the day!", "Will you come with me?", "I am ready for an adventure."])),
            f"{hero.name} and {hero.their} friend {friend.name} set off together, and {self.pick(WEATHER)}.",
            f"Soon they came to {obstacle}.",
            self.say(friend, self.pick(["How will we get past?", "What do we do now?", "This looks hard."]),
                     ("asked", "said")),
            f"{hero.name} thought for a moment. Then {fix}.",
            f"When they reached {goal}, they could see all of {self.pick(['the land', 'the village', 'the sea', 'the valley'])}.",
            self.say(hero, self.pick(["It is so beautiful!", "We made it!", "It was worth the walk."]),
                     ("said", "whispered")),
            f"They sat down and shared the {self.pick(FOODS)} before they went home.",
        ]

    def storm(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        return [
            f"{self.pick(TIMES)}, big dark clouds came over {spot}.",
            "The wind began to blow and the rain fell hard.",
            f"{hero.name} saw that {hero.their} friend {friend.name} the {friend.kind} was still outside, far from home.",
            self.say(friend, self.pick(["Help! I am cold and wet!", "I cannot find my way!", "The wind is too strong!"]),
                     ("cried", "said")),
            f"{hero.name} was {self.pick(FEELINGS_BAD)}, but {hero.they} did not run away.",
            f"{cap(hero.they)} took {the(thing)} and ran out into the rain.",
            self.say(hero, self.pick(["Come with me! My home is close.", "Hold on to me!", "Follow me, I know the way."]),
                     ("called", "said")),
            "Together they hurried back and sat by the warm fire.",
            f"Soon the storm was over, and the sky was {self.pick(['clear', 'pink', 'full of stars', 'bright again'])}.",
            self.say(friend, self.pick(["You were so brave.", "Thank you for coming to get me.", "I will never forget this."]),
                     ("said", "whispered")),
        ]

    def dark(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        return [
            f"{hero.name} was afraid of the dark.",
            f"Every night, {hero.they} asked {hero.their} mother to leave a light on.",
            f"{self.pick(NIGHTS)}, the light went out and the room was black.",
            self.say(hero, self.pick(["Who is there?", "I do not like this!", "Mama, where are you?"]),
                     ("whispered", "cried", "asked")),
            f"Then {hero.name} heard a small tap at the window. It was {friend.name} the {friend.kind}.",
            self.say(friend, self.pick(["Come and look at the sky.", "Do not be scared. Look up!",
                                        "The night is full of friends."]), ("said", "whispered")),
            f"{hero.name} went to the window with {the(thing)} in {hero.their} hands.",
            f"The sky was full of stars, and the moon shone over {spot}.",
            "An owl said hello, and the crickets sang a soft song.",
            f"{hero.name} was not afraid any more.",
        ]

    def gift(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        made = self.pick(["a card with a big heart on it", "a cake with " + self.pick(FOODS),
                          "a crown of flowers", "a little wooden bird", "a song", "a picture of the two of them"])
        return [
            f"Tomorrow was the birthday of {hero.name}'s friend {friend.name} the {friend.kind}.",
            f"{hero.name} wanted to give {friend.them} a present.",
            f"But {hero.name} had no money to buy one.",
            self.say(hero, self.pick(["What can I give?", "I have nothing to give.", "I must think of something."]),
                     ("said", "asked")),
            f"{cap(hero.they)} sat by {spot} and thought and thought.",
            f"Then {hero.they} had an idea. {cap(hero.they)} would make {made}.",
            f"{hero.name} worked all day, and {self.pick(WEATHER)}.",
            f"The next morning, {hero.name} gave {friend.name} the present.",
            self.say(friend, self.pick(["It is the best present ever!", "You made this for me?",
                                        "I love it!"]), ("cried", "said", "asked")),
            f"{friend.name} smiled, and {hero.name} felt {self.pick(FEELINGS_GOOD)}.",
            f"{hero.name} learned that the best gifts come from the heart.",
        ]

    def contest(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        event = self.pick(["a race", "a singing contest", "a kite contest", "a baking contest",
                           "a jumping contest", "a boat race"])
        return [
            f"{self.pick(TIMES)}, everyone in the village talked about {event} at {spot}.",
            f"{hero.name} wanted to win more than anything.",
            f"{cap(hero.they)} practiced every day with {the(thing)}.",
            f"On the day of {the(event)}, {hero.name} saw that {hero.their} friend {friend.name} had fallen down and hurt {friend.their} leg.",
            self.say(friend, self.pick(["Ouch! I cannot go on.", "Go on without me.", "My leg hurts."]),
                     ("cried", "said")),
            f"{hero.name} stopped. {cap(hero.they)} could win, but {hero.they} did not want to leave a friend behind.",
            f"{cap(hero.they)} helped {friend.name} stand up, and they finished together, last of all.",
            "Everyone clapped the loudest for them.",
            self.say(hero, self.pick(["Helping you was better than winning.", "We finished together!",
                                      "I am glad I stopped."]), ("said", "smiled")),
            f"That evening, the mayor gave {hero.name} a little medal for kindness.",
        ]

    def new_friend(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        return [
            f"{hero.name} and {hero.their} family had just moved there, and {hero.they} did not know anyone.",
            f"{self.pick(TIMES)}, {hero.name} sat alone by {spot} and played with {the(thing)}.",
            f"A {friend.trait} {friend.kind} named {friend.name} came and watched.",
            self.say(friend, self.pick(["Can I play too?", "What are you doing?", "That looks fun. May I try?"]),
                     ("asked",)),
            f"{hero.name} was shy, but {hero.they} said yes.",
            f"They played with {the(thing)} until the sun went down.",
            self.say(hero, self.pick(["Will you come back tomorrow?", "I am glad you came.", "You are my first friend here."]),
                     ("asked", "said")),
            self.say(friend, self.pick(["Of course I will!", "Me too.", "Let us be friends forever."]),
                     ("said", "laughed")),
            f"From then on, {hero.name} was never lonely again.",
        ]

    def broken(self, hero: Character, friend: Character, thing: str, spot: str) -> list[str]:
        return [
            f"{hero.name} and {hero.their} friend {friend.name} the {friend.kind} were playing with {the(thing)} near {spot}.",
            f"{friend.name} threw it too high, and it fell and broke.",
            self.say(hero, self.pick(["You broke it!", "Look what you did!", "Oh no!"]), ("cried", "said")),
            f"{friend.name} felt {self.pick(FEELINGS_BAD)} and began to cry.",
            self.say(friend, self.pick(["I am sorry. I did not mean to.", "I am so sorry.", "Can you forgive me?"]),
                     ("said", "whispered", "asked")),
            f"{hero.name} saw that {friend.name} was sorry.",
            f"{cap(hero.they)} took a deep breath and said it was all right.",
            f"Together they fixed {the(thing)} with some {self.pick(['glue', 'string', 'tape', 'nails'])}.",
            "It was not perfect, but it worked, and they laughed.",
            self.say(hero, self.pick(["Friends are more important than toys.", "Now it is our special one.",
                                      "Let us play again!"]), ("said",)),
        ]

    PLOTS = ("lost", "journey", "storm", "dark", "gift", "contest", "new_friend", "broken")

    def story(self) -> str:
        hero = self.character()
        friend = self.character(avoid=hero.name)
        place, spot = self.pick(PLACES)
        thing = self.pick(OBJECTS)
        opening = self.pick(OPENINGS).format(a_hero=hero.a, place=located(place), Place=cap(located(place)))
        intro = self.pick([
            f"{hero.name} liked to play near {spot}.",
            f"Every day, {hero.name} went to {spot} to see {hero.their} friend {friend.name}.",
            f"{cap(hero.they)} had a best friend, {friend.a}.",
            f"{hero.name} loved {self.pick(FOODS)} and long walks.",
            f"Everyone {where(place)} knew {hero.name}.",
        ])
        plot = getattr(self, self.pick(self.PLOTS))(hero, friend, thing, spot)
        ending = self.pick([
            "And they lived happily ever after.",
            f"From that day on, {hero.name} and {friend.name} were the best of friends.",
            f"That night, {hero.name} went to sleep with a big smile.",
            f"{hero.name} never forgot that day.",
            "The end.",
            f"And every year after that, they went back to {spot} together.",
        ])
        return " ".join([opening, intro, *plot, ending])


def stories(seed: int = SEED, count: int = COUNT) -> str:
    teller = Teller(random.Random(seed))
    return "".join(f"{teller.story()}\n{SEPARATOR}\n" for _ in range(count))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed file")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args()
    text = stories(args.seed, args.count)
    if args.check:
        same = TARGET.exists() and TARGET.read_text(encoding="utf-8") == text
        print(f"{TARGET}: {'up to date' if same else 'differs from what make_stories.py writes'}")
        return 0 if same else 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {args.count} stories, {len(text.encode())} bytes, to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
