"""How long R1-distill answers are: the parametric length model of `assets/r1_answer_lengths.json` (its
source, derivation and assumptions are in the file), for the generation benchmark's per-request token
counts and its projection of the evaluation's time."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from importlib import resources

ASSET = "r1_answer_lengths.json"


@dataclass(frozen=True)
class Subject:
    name: str
    problems: int
    mean: float
    accuracy: float


@dataclass(frozen=True)
class LengthModel:
    subjects: tuple[Subject, ...]
    sigma: float
    wrong_factor: float
    scale: float

    def right_mean(self, s: Subject) -> float:
        """Mean length of right answers in subject `s` (wrong ones are `wrong_factor` times longer)."""
        return self.scale * s.mean / (s.accuracy + self.wrong_factor * (1 - s.accuracy))

    def draw(self, n: int, seed: int, cap: int) -> list[int]:
        """`n` answer lengths in tokens, seeded, each between 1 and `cap`."""
        rng = random.Random(seed)
        weights = [s.problems for s in self.subjects]
        out = []
        for _ in range(n):
            s = rng.choices(self.subjects, weights=weights)[0]
            mean = self.right_mean(s) * (1 if rng.random() < s.accuracy else self.wrong_factor)
            length = rng.lognormvariate(math.log(mean) - self.sigma**2 / 2, self.sigma)
            out.append(min(cap, max(1, round(length))))
        return out

    def mean(self, cap: int, n: int = 200_000, seed: int = 0) -> float:
        """The mean length under `cap` (a seeded Monte Carlo estimate)."""
        return sum(self.draw(n, seed, cap)) / n


def load() -> LengthModel:
    """The length model kept in the project."""
    raw = json.loads(resources.files("r1ft.assets").joinpath(ASSET).read_text(encoding="utf-8"))
    return LengthModel(
        subjects=tuple(Subject(**s) for s in raw["subjects"]),
        sigma=raw["sigma"],
        wrong_factor=raw["wrong_factor"],
        scale=raw["scale"],
    )
