"""Synthetic tasks the project generates itself, deterministically, for the offline demo and tests.

``polite_rewrite`` is a miniature of the detoxification recipe: a toxic sentence is rewritten
politely by replacing insults with neutral words and dropping swearing, keeping everything
else. Copying most of the input while editing a few words is exactly what a small seq2seq
model must learn on ParaDetox, but here sentences are short and the vocabulary is about
150 words, so models trained from scratch on a laptop CPU learn it in a minute or two.

``keyword_summary`` is a miniature summarization task: the output keeps the content words of
the input (nouns and their adjectives, in order) and drops everything else.
"""
from __future__ import annotations

import random

SUBJECTS = ["you", "your friend", "this guy", "the manager", "my neighbor", "that driver", "the author",
            "his brother", "our teacher", "the waiter", "her boss", "the new player", "the landlord",
            "my cousin", "the referee", "their coach"]
COPULAS = ["is", "was", "seems", "looks", "sounds", "acts"]
INSULT_ADJ = {"stupid": "unwise", "idiotic": "misguided", "dumb": "uninformed", "ugly": "unattractive",
              "pathetic": "disappointing", "useless": "unhelpful", "crappy": "poor", "disgusting": "unpleasant",
              "lame": "weak", "trashy": "careless", "worthless": "unproductive", "brainless": "thoughtless"}
INSULT_NOUN = {"idiot": "person", "moron": "person", "jerk": "man", "loser": "person", "clown": "fellow",
               "scumbag": "individual", "pig": "guest", "dumbass": "person"}
NEUTRAL_ADJ = ["kind", "smart", "tall", "quiet", "late", "early", "busy", "happy", "tired", "loud", "new",
               "careful", "honest", "young", "strange", "calm"]
SWEAR_INTENSIFIERS = ["damn", "freaking", "bloody", "fucking"]
INTERJECTIONS = ["wtf,", "damn it,", "holy crap,", "screw this,"]
PLAIN_INTENSIFIERS = ["very", "quite", "rather", "so"]
OBJECTS = ["report", "car", "idea", "song", "plan", "house", "answer", "movie", "game", "speech", "email",
           "story", "meal", "book"]
VERBS = ["wrote", "made", "sent", "liked", "ruined", "explained", "chose", "shared", "changed", "sold"]
CONNECTORS = ["and", "but", "because", "so", "while"]


def _adjective(rng: random.Random) -> tuple[str, str]:
    """(toxic form, polite form) of an optionally intensified adjective."""
    if rng.random() < 0.55:
        toxic = rng.choice(sorted(INSULT_ADJ))
        polite = INSULT_ADJ[toxic]
    else:
        toxic = polite = rng.choice(NEUTRAL_ADJ)
    r = rng.random()
    if r < 0.3:
        return f"{rng.choice(SWEAR_INTENSIFIERS)} {toxic}", polite
    if r < 0.5:
        plain = rng.choice(PLAIN_INTENSIFIERS)
        return f"{plain} {toxic}", f"{plain} {polite}"
    return toxic, polite


def _clause(rng: random.Random) -> tuple[str, str]:
    subj = rng.choice(SUBJECTS)
    if rng.random() < 0.5:
        adj_t, adj_p = _adjective(rng)
        cop = rng.choice(COPULAS)
        return f"{subj} {cop} {adj_t}", f"{subj} {cop} {adj_p}"
    if rng.random() < 0.5:
        noun = rng.choice(sorted(INSULT_NOUN))
        adj_t, adj_p = _adjective(rng)
        return f"{subj} is a {adj_t} {noun}", f"{subj} is a {adj_p} {INSULT_NOUN[noun]}"
    adj_t, adj_p = _adjective(rng)
    verb, obj = rng.choice(VERBS), rng.choice(OBJECTS)
    return f"{subj} {verb} a {adj_t} {obj}", f"{subj} {verb} a {adj_p} {obj}"


def polite_rewrite(rng: random.Random) -> dict:
    src, tgt = _clause(rng)
    if rng.random() < 0.5:
        s2, t2 = _clause(rng)
        conn = rng.choice(CONNECTORS)
        src, tgt = f"{src} {conn} {s2}", f"{tgt} {conn} {t2}"
    if rng.random() < 0.25:
        src = f"{rng.choice(INTERJECTIONS)} {src}"
    return {"source": src + ".", "target": tgt + "."}


def keyword_summary(rng: random.Random) -> dict:
    words, keep = [], []
    for _ in range(rng.randint(2, 4)):
        adj, noun = rng.choice(NEUTRAL_ADJ), rng.choice(OBJECTS)
        filler = rng.sample(["the", "a", "very", "of", "with", "and", "then", "also", "really"], 2)
        words += [filler[0], adj, noun, filler[1]]
        keep += [adj, noun]
    return {"source": " ".join(words), "target": " ".join(keep)}


SYNTHETIC_TASKS = {"polite_rewrite": polite_rewrite, "keyword_summary": keyword_summary}


def generate(task: str, num_examples: int, seed: int) -> list[dict]:
    """``num_examples`` {'source', 'target'} dicts; the same arguments always give the same list."""
    if task not in SYNTHETIC_TASKS:
        from utils.errors import UserError
        raise UserError(f"data.synthetic.task {task!r} is unknown; choose one of {', '.join(SYNTHETIC_TASKS)}")
    rng = random.Random(seed)
    make = SYNTHETIC_TASKS[task]
    return [make(rng) for _ in range(num_examples)]


def unlabeled_sources(task: str, num_examples: int, seed: int, count: int) -> list[str]:
    """The sources of the ``count`` examples generated after the first ``num_examples`` (the labeled
    ones, whose sources are left out, so that no test input enters the transfer set), distinct."""
    examples = generate(task, num_examples + count, seed)
    labeled = {e["source"] for e in examples[:num_examples]}
    return list(dict.fromkeys(e["source"] for e in examples[num_examples:] if e["source"] not in labeled))
