"""Synthetic, learnable recommendation data for the demo and the tests; deterministic by seed.

Items belong to genres and their titles carry the genre's vocabulary ("Haunted Crypt",
"Galactic Starship II"). Each user likes two genres and dislikes two others. The history is
mostly liked-genre items, the positive is an unseen liked-genre item and the negatives are
disliked-genre items, so "pick the candidate that matches the history" is the signal to learn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from dmporec.records import Item, Record

GENRES: dict[str, tuple[list[str], list[str]]] = {
    "sci-fi": (
        ["Galactic", "Quantum", "Stellar", "Cyber", "Orbital", "Martian"],
        ["Starship", "Android", "Nebula", "Colony", "Wormhole", "Mothership"],
    ),
    "horror": (
        ["Haunted", "Cursed", "Bloody", "Wicked", "Undead", "Sinister"],
        ["Manor", "Asylum", "Ritual", "Crypt", "Nightmare", "Graveyard"],
    ),
    "romance": (
        ["Sweet", "Parisian", "Endless", "Tender", "Moonlit", "Forever"],
        ["Kiss", "Love Letter", "Wedding", "Heartstrings", "Honeymoon", "Valentine"],
    ),
    "comedy": (
        ["Crazy", "Wacky", "Goofy", "Accidental", "Awkward", "Hilarious"],
        ["Roommates", "Road Trip", "Office Party", "Best Man", "Family Vacation", "Pranksters"],
    ),
    "western": (
        ["Dusty", "Lonesome", "Outlaw", "Wild West", "Copper Creek", "Tombstone"],
        ["Canyon", "Saddle", "Sheriff", "Frontier", "Ranch", "Gunslinger"],
    ),
    "animation": (
        ["Little", "Magic", "Brave", "Tiny", "Fluffy", "Sparkly"],
        ["Dragon", "Penguin", "Kingdom", "Robot Pal", "Bunny", "Fairy Tale"],
    ),
    "war": (
        ["Iron", "Last", "Frontline", "Battalion", "Operation", "Bunker"],
        ["Soldiers", "Invasion", "Regiment", "Trenches", "Airstrike", "Siege"],
    ),
    "sports": (
        ["Championship", "Underdog", "Slam Dunk", "Home Run", "Knockout", "Victory"],
        ["Season", "Coach", "Playoffs", "Rookie", "Stadium", "Comeback"],
    ),
}
_SEQUELS = ["", "", "", " II", " 2", ": Reloaded", " Returns"]


class DemoDataConfig(BaseModel):
    """Size and seed of the generated demo data."""

    model_config = ConfigDict(extra="forbid")
    train_users: int = Field(48, ge=1, description="Users for SFT and DMPO (one record each).")
    valid_users: int = Field(
        32, ge=0, description="Held-out users for validation (each with `negatives` negatives)."
    )
    test_users: int = Field(96, ge=1, description="Users for the test pairs.")
    negatives: int = Field(
        5, ge=1, le=10, description="Negatives drawn per training user (DMPO uses the first k)."
    )
    history_min: int = Field(5, ge=1, description="Shortest history.")
    history_max: int = Field(8, ge=1, description="Longest history.")
    seed: int = Field(0, description="Same seed, same data.")


@dataclass(frozen=True)
class DemoData:
    catalog: dict[str, str]  # title -> genre
    train: list[Record]
    valid: list[Record]
    test: list[Record]


def make_catalog(rng: random.Random) -> dict[str, str]:
    catalog: dict[str, str] = {}
    for genre, (adjectives, nouns) in GENRES.items():
        for adjective in adjectives:
            for noun in nouns:
                catalog[f"{adjective} {noun}{rng.choice(_SEQUELS)}"] = genre
    return catalog


def make_demo_data(cfg: DemoDataConfig | None = None) -> DemoData:
    cfg = cfg or DemoDataConfig()
    if cfg.history_max < cfg.history_min:
        raise ValueError(f"history_max ({cfg.history_max}) < history_min ({cfg.history_min})")
    rng = random.Random(cfg.seed)
    catalog = make_catalog(rng)
    by_genre: dict[str, list[str]] = {}
    for title, genre in catalog.items():
        by_genre.setdefault(genre, []).append(title)
    genres = sorted(by_genre)

    def user(uid: str, negatives: int) -> Record:
        picked = rng.sample(genres, 4)
        liked, disliked = picked[:2], picked[2:]
        liked_pool = [t for g in liked for t in by_genre[g]]
        other_pool = [t for g in genres if g not in liked for t in by_genre[g]]
        n = rng.randint(cfg.history_min, cfg.history_max)
        # Mostly liked-genre items, with one or two from elsewhere so the signal is not trivial.
        n_other = min(rng.choice([0, 1, 1, 2]), n - 1)
        chosen = rng.sample(liked_pool, n - n_other + 1)
        history = chosen[1:] + rng.sample(other_pool, n_other)
        rng.shuffle(history)
        disliked_pool = [t for g in disliked for t in by_genre[g] if t not in history]
        return Record(
            user_id=uid,
            history=[Item(t) for t in history],
            positive=Item(chosen[0]),
            negatives=[Item(t) for t in rng.sample(disliked_pool, negatives)],
            metadata={"liked": liked, "disliked": disliked},
        )

    train = [user(f"train-{i}", cfg.negatives) for i in range(cfg.train_users)]
    test = [user(f"test-{i}", 1) for i in range(cfg.test_users)]
    # Drawn last, so adding validation users leaves the training and test users as they were.
    valid = [user(f"valid-{i}", cfg.negatives) for i in range(cfg.valid_users)]
    return DemoData(catalog, train, valid, test)
