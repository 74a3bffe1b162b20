"""What a demo product is made of, drawn so that products of one category look alike.

Each trait of a product (a proportion, a colour, a layout) is a blend of its
category's value, the same for every product of the category, and the product's
own, weighted by `similarity`: 0 makes each product a fresh draw of its category's
shape family; 1 gives all products of a category one shape, palette and layout, so
that only their accent colours, brand name, logo and small print tell them apart.
"""

import colorsys
import zlib

import numpy as np

from tfrecords.demo_labels import LAYOUTS, LOGOS, Colour, Print

_CONSONANTS, _VOWELS = list("BCDFGKLMNPRSTVZ"), list("AEIOU")


class Traits:
    """Draws the traits of one product of category number `category`.

    `shared` caches the category's values by trait name (give every product of a
    category the same dict); a name's value is seeded by (seed, category, name), so
    it does not depend on the order or number of traits drawn before it."""

    def __init__(self, seed: int, category: int, own: np.random.Generator, similarity: float, shared: dict):
        self.seed, self.category, self.own, self.similarity, self.shared = seed, category, own, similarity, shared

    def _shared(self, name: str) -> float:
        if name not in self.shared:
            seed = [self.seed, self.category, zlib.crc32(name.encode())]
            self.shared[name] = float(np.random.default_rng(seed).random())
        return self.shared[name]

    def uniform(self, name: str, low: float, high: float) -> float:
        """A number in [low, high): the category's, moved towards the product's own by 1 - similarity."""
        shared, own = self._shared(name), self.own.random()
        return low + (high - low) * (shared + (own - shared) * (1 - self.similarity))

    def pick(self, name: str, options):
        """The category's choice with probability `similarity`, else the product's own."""
        if self.own.random() < self.similarity:
            return options[int(self._shared(name) * len(options))]
        return options[int(self.own.integers(len(options)))]

    def colour(self, name: str, saturation=(0.35, 0.9), value=(0.35, 0.95)) -> Colour:
        """An RGB colour (0-255) whose hue turns from the category's towards the product's own."""
        shared, own = self._shared(name + ".hue"), self.own.random()
        hue = shared + ((own - shared + 0.5) % 1 - 0.5) * (1 - self.similarity)
        rgb = colorsys.hsv_to_rgb(hue % 1, self.uniform(name + ".s", *saturation), self.uniform(name + ".v", *value))
        return tuple(int(c * 255) for c in rgb)

    def own_colour(self, saturation=(0.5, 1.0), value=(0.4, 1.0)) -> Colour:
        """A colour of the product's own, whatever the similarity: a logo, a detail."""
        rgb = colorsys.hsv_to_rgb(self.own.random(), self.own.uniform(*saturation), self.own.uniform(*value))
        return tuple(int(c * 255) for c in rgb)

    def brand(self) -> str:
        """A pronounceable name of 2 or 3 syllables, the product's own."""
        own = self.own
        return "".join(own.choice(_CONSONANTS) + own.choice(_VOWELS) for _ in range(int(own.integers(2, 4))))

    def print_design(self, prefix: str = "label") -> Print:
        """The printed label: background, ink and layout blended with the category's; accent
        colours, logo, name and small print the product's own."""
        paper = self.colour(prefix + ".paper", (0.0, 0.9), (0.55, 1.0))
        dark = sum(paper) < 1.4 * 255
        return Print(
            paper=paper,
            ink=(245, 245, 240) if dark else self.colour(prefix + ".ink", (0.2, 0.9), (0.05, 0.35)),
            accent=self.own_colour((0.5, 1.0), (0.3, 0.95)),
            second=self.own_colour(),
            layout=self.pick(prefix + ".layout", LAYOUTS),
            band=self.uniform(prefix + ".band", 0.2, 0.8),
            logo=LOGOS[int(self.own.integers(len(LOGOS)))],
            logo_colour=self.own_colour(),
            brand=self.brand(),
            brand_size=self.uniform(prefix + ".brand_size", 0.12, 0.25),
            details=int(self.own.integers(2**31)),
        )
