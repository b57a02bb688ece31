"""A generated two-persona preference set in the spirit of VPL's "pets" data.

Half the pairs are controversial: a pet question answered once with a dog and once with a cat
recommendation, written in the same tone, so only the persona decides (the dog lover prefers
the dog answer, the cat lover the cat answer). The other half agree: a helpful answer against a
rude or useless one, which both personas prefer the same way. A monolithic reward model is
pinned near 50% on controversial pairs of a balanced population, while a model that infers the
persona from a few context pairs can get them nearly all right: that gap is the fast, offline
correctness test of the whole learner. Texts are short and varied (many phrasings per side) so
a frozen sentence encoder separates the two sides of a controversial pair by content, not by
one memorised string.
"""

from __future__ import annotations

import numpy as np

from fedvpa_secure.data.dialogue import pair_id
from fedvpa_secure.data.types import RawPair
from fedvpa_secure.errors import ConfigError

SUBSET = "synthetic"
CAT_LOVER = "cat-lover"
DOG_LOVER = "dog-lover"
PERSONAS = (CAT_LOVER, DOG_LOVER)  # sorted; raw "chosen" is the cat lover's choice
_MAX_ATTEMPTS_PER_PAIR = 50

PET_PROMPTS = (
    "I'm thinking about getting a pet. What would you recommend?",
    "Which animal makes the best companion for a first-time owner?",
    "I live alone and want a pet. Any suggestions?",
    "What pet should I adopt this year?",
    "My kids keep asking for a pet. Which one should we get?",
    "What's the best pet for someone who works from home?",
    "I want a furry friend. What kind of pet do you suggest?",
    "Can you recommend a pet for a small house with a garden?",
    "Which pet would make my weekends happier?",
    "What animal should I bring home from the shelter?",
    "I have never owned a pet. Where should I start?",
    "If you had to pick one pet for me, what would it be?",
)
PET_OPENERS = (
    "I'd recommend",
    "My suggestion is",
    "You should consider",
    "I think the best choice is",
    "Go for",
    "Honestly, I would pick",
    "The pet I'd choose for you is",
    "Definitely get",
)
PET_CLOSERS = (
    "",
    "You won't regret it.",
    "Visit a local shelter to meet a few.",
    "Good luck with your new friend!",
    "It's a choice you'll love.",
    "Take your time to find the right one.",
)
DOG_NOUNS = (
    "a dog", "a puppy", "a rescue dog", "a friendly dog", "a golden retriever", "a labrador",
    "a beagle", "a corgi", "a border collie", "a poodle", "a dachshund", "a spaniel",
)  # fmt: skip
DOG_REASONS = (
    "Dogs are loyal and love going on walks with you.",
    "A dog will get you outside and moving every day.",
    "Dogs learn tricks quickly and are eager to please.",
    "Nothing beats a dog greeting you at the door with a wagging tail.",
    "Dogs make great hiking and running partners.",
    "A dog becomes a protective, affectionate member of the family.",
    "Playing fetch in the park with a dog is pure joy.",
    "Dogs are social and help you meet other people on walks.",
    "Training a puppy builds a wonderful bond.",
    "A dog's enthusiasm will brighten every single day.",
)
CAT_NOUNS = (
    "a cat", "a kitten", "a rescue cat", "a calm cat", "a maine coon", "a siamese cat",
    "a ragdoll cat", "a british shorthair", "a tabby cat", "a persian cat", "a bengal cat",
    "a tuxedo cat",
)  # fmt: skip
CAT_REASONS = (
    "Cats are independent and happy to relax while you work.",
    "A cat keeps itself clean and never needs walks.",
    "Cats purr on your lap and are wonderfully calming.",
    "A cat fits easily into a small apartment.",
    "Cats are quiet, tidy and low maintenance.",
    "Watching a kitten chase a toy mouse is pure joy.",
    "Cats are curious, playful and affectionate in their own way.",
    "A cat will happily keep you company on the couch.",
    "Cats use a litter box, so nobody has to go out in the rain.",
    "A cat's gentle purring melts stress away.",
)

# Agreeing pairs: (prompt variants, helpful answers). Both personas prefer any helpful answer
# to any rude one, so these pairs teach the shared part of the reward.
TOPICS = (
    (
        ("How often should I feed my adult dog?", "What's a good feeding schedule for a dog?"),
        (
            "Most adult dogs do well with two meals a day, about twelve hours apart.",
            "Feed an adult dog twice a day and follow the portion guide on the food bag.",
            "Two measured meals a day works for most dogs; adjust for weight and activity.",
        ),
    ),
    (
        ("How often should I clean my cat's litter box?", "How do I keep a litter box fresh?"),
        (
            "Scoop the litter box once a day and replace all the litter every week.",
            "Remove clumps daily and wash the box with mild soap when you change the litter.",
            "Daily scooping plus a full litter change each week keeps it clean and odour free.",
        ),
    ),
    (
        ("How do I cook pasta so it doesn't stick?", "Any tips for cooking spaghetti?"),
        (
            "Use plenty of boiling salted water and stir during the first two minutes.",
            "Boil a large pot of salted water, add the pasta, and stir it early and often.",
            "Give the pasta lots of water, salt it well, and taste a minute before the box time.",
        ),
    ),
    (
        ("How can I fall asleep faster?", "Do you have tips for sleeping better?"),
        (
            "Keep a regular bedtime, dim the lights, and put your phone away an hour before bed.",
            "Avoid caffeine after lunch and keep your bedroom cool, dark and quiet.",
            "A short wind-down routine, like reading for twenty minutes, helps many people.",
        ),
    ),
    (
        ("How do I start a monthly budget?", "What's an easy way to track my spending?"),
        (
            "List your income, then your fixed bills, and set a limit for everything else.",
            "Track every expense for a month, then group them and set targets per category.",
            "Try the 50/30/20 rule: needs, wants, then savings, and review it each month.",
        ),
    ),
    (
        ("What's a simple workout I can do at home?", "How can I exercise without a gym?"),
        (
            "Try three rounds of squats, push-ups, lunges and a one-minute plank.",
            "A brisk twenty-minute circuit of body-weight moves works well with no equipment.",
            "Start with ten minutes of stretching and simple strength moves, then build up.",
        ),
    ),
    (
        ("How do I fix a flat bike tyre?", "My bicycle has a puncture. What should I do?"),
        (
            "Remove the wheel, find the hole in the tube, and patch it or fit a new tube.",
            "Take the tube out, pump it up to find the leak, patch it, and check the tyre.",
            "Use tyre levers to pull out the tube, repair the puncture, and reinflate it.",
        ),
    ),
    (
        ("How long should I walk my dog each day?", "How much exercise does a dog need?"),
        (
            "Most dogs need thirty minutes to two hours of activity a day, by breed and age.",
            "Aim for at least two walks a day and add play time for energetic breeds.",
            "Ask your vet, but daily walks plus some off-lead play suit most dogs.",
        ),
    ),
    (
        ("How often should my cat see the vet?", "Does an indoor cat need checkups?"),
        (
            "Adult cats should have a checkup once a year, and seniors twice a year.",
            "Yes, a yearly visit catches problems early, even for indoor cats.",
            "Plan an annual exam with vaccines, and go sooner if your cat stops eating.",
        ),
    ),
    (
        ("How should I prepare for a job interview?", "Any advice before my interview?"),
        (
            "Research the company, practise answers to common questions, and prepare examples.",
            "Read the job description closely and plan two or three stories that fit it.",
            "Prepare a few questions for them and arrive ten minutes early.",
        ),
    ),
    (
        ("How can I practise a new language every day?", "What's the best way to learn Spanish?"),
        (
            "Spend fifteen minutes a day with flashcards and listen to simple podcasts.",
            "Talk with a language partner weekly and label things around your home.",
            "Read short stories at your level and write a few sentences each day.",
        ),
    ),
    (
        ("How do I make coffee with a French press?", "What ratio should I use for coffee?"),
        (
            "Use coarse grounds, one gram of coffee to fifteen of water, and steep four minutes.",
            "Pour hot water over coarse coffee, wait four minutes, then press slowly.",
            "Try fifteen grams of coffee per 250 ml of water and adjust to taste.",
        ),
    ),
)
HELPFUL_OPENERS = ("", "Good question!", "Sure.", "Happy to help.", "Here's what works:")
RUDE_OPENERS = ("", "Ugh.", "Seriously?", "Wow.", "Meh.", "Honestly,")
RUDE_BODIES = (
    "figure it out yourself, I'm not your assistant.",
    "why would you even ask that? Just search it.",
    "no idea. Stop bothering me with this.",
    "that's a boring question, ask someone else.",
    "whatever, it doesn't really matter.",
    "not this again. Look it up.",
    "I don't feel like answering that.",
    "do whatever you want, I don't care.",
    "that's your problem, not mine.",
    "everyone knows that. Try harder.",
    "I could tell you, but I won't.",
    "just guess, you'll probably be fine. Or not.",
)
RUDE_ENDINGS = ("", "Don't ask me again.", "Go bother someone else.", "Not my job.")


def generate_synthetic(n_pairs: int, seed: int) -> tuple[RawPair, ...]:
    """Generate ``n_pairs`` distinct pairs: the first half controversial, the rest agreeing.

    Each RawPair's ``chosen`` is the cat lover's choice; ``extra["controversial"]`` says
    whether the dog lover prefers ``rejected`` instead. Deterministic from ``seed``.

    Raises:
        ConfigError: n_pairs < 0, or more distinct pairs were asked for than the templates hold.
    """
    if type(n_pairs) is not int or n_pairs < 0:
        raise ConfigError(f"n_pairs must be a non-negative integer, got {n_pairs!r}")
    rng = np.random.default_rng([seed, 0x5E7])
    n_controversial = n_pairs // 2
    pairs: list[RawPair] = []
    seen: set[str] = set()
    for index in range(n_pairs):
        controversial = index < n_controversial
        for _ in range(_MAX_ATTEMPTS_PER_PAIR):
            prompt, chosen, rejected = _pet_pair(rng) if controversial else _manners_pair(rng)
            pid = pair_id(prompt, chosen, rejected)
            if pid not in seen:
                break
        else:  # pragma: no cover - needs millions of pairs
            raise ConfigError(f"cannot generate {n_pairs} distinct synthetic pairs; ask for fewer")
        seen.add(pid)
        pairs.append(
            RawPair(
                pair_id=pid,
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                subset=SUBSET,
                source=f"synthetic:{seed}:{index}",
                extra={"controversial": controversial},
            )
        )
    return tuple(pairs)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _pet_answer(rng: np.random.Generator, nouns: tuple[str, ...], reasons: tuple[str, ...]) -> str:
    n_reasons = int(rng.integers(1, 3))
    chosen = rng.choice(len(reasons), size=n_reasons, replace=False)
    return _sentence(
        f"{_pick(rng, PET_OPENERS)} {_pick(rng, nouns)}.",
        *(reasons[int(i)] for i in chosen),
        _pick(rng, PET_CLOSERS),
    )


def _pet_pair(rng: np.random.Generator) -> tuple[str, str, str]:
    prompt = f"Human: {_pick(rng, PET_PROMPTS)}"
    return (
        prompt,
        _pet_answer(rng, CAT_NOUNS, CAT_REASONS),
        _pet_answer(rng, DOG_NOUNS, DOG_REASONS),
    )


def _manners_pair(rng: np.random.Generator) -> tuple[str, str, str]:
    prompts, answers = TOPICS[int(rng.integers(len(TOPICS)))]
    prompt = f"Human: {_pick(rng, prompts)}"
    helpful = _sentence(_pick(rng, HELPFUL_OPENERS), _pick(rng, answers))
    opener, body = _pick(rng, RUDE_OPENERS), _pick(rng, RUDE_BODIES)
    if not opener.endswith(","):  # "Honestly, figure it out" but "Ugh. Figure it out"
        body = body[0].upper() + body[1:]
    rude = _sentence(opener, body)
    return prompt, helpful, _sentence(rude, _pick(rng, RUDE_ENDINGS))
