"""The shapeshop demo's made-up world: products, brands, their knowledge base, and phrasings.

Everything the demo corpus says is generated from these tables; nothing here touches files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATASET = "shapeshop"
DATASET_ID = 50

SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "teal", "brown", "gray", "black")
PRICES = ("$4.99", "$7.50", "$9.99", "$12.00", "$15.25", "$19.90")


@dataclass(frozen=True)
class Brand:
    """A made-up maker: its label text and the facts its knowledge passages state."""

    name: str
    founder: str
    city: str
    year: int
    material: str

    @property
    def title(self) -> str:
        return self.name.title()


BRANDS: tuple[Brand, ...] = (
    Brand("QUORBLE", "Mira Salo", "Tallinn", 1962, "birch plywood"),
    Brand("VELMORA", "Tomas Ekdahl", "Porto", 1978, "recycled tin"),
    Brand("ZINTRAK", "Ada Okafor", "Lagos", 1991, "coloured resin"),
    Brand("BROFELL", "Henrik Lund", "Bergen", 1955, "oak offcuts"),
    Brand("MAPLIX", "Carmen Ruiz", "Valencia", 1983, "pressed cork"),
    Brand("TORVANE", "Yuki Tanabe", "Sapporo", 2001, "bamboo fibre"),
    Brand("GLENDRY", "Fiona Marsh", "Galway", 1969, "felted wool"),
    Brand("HUXLEN", "Pavel Novak", "Brno", 1947, "enamelled steel"),
    Brand("SPARVIK", "Ingrid Holm", "Uppsala", 2010, "beech wood"),
    Brand("DORVANT", "Luca Bianchi", "Turin", 1938, "glazed ceramic"),
    Brand("FROMEL", "Anouk de Vries", "Utrecht", 1996, "hemp canvas"),
    Brand("KESTRO", "Omar Haddad", "Amman", 2007, "olive wood"),
)
FACETS = ("founder", "city", "year")


# ---------------------------------------------------------------------------
# knowledge base and catalogue texts


def passage_text(brand: Brand, facet: str) -> str:
    """The knowledge passage stating one fact about one brand."""
    if facet == "founder":
        return (
            f"{brand.title} was started by {brand.founder}, who still signs off every new "
            f"design and sketches the shapes by hand."
        )
    if facet == "city":
        return (
            f"The {brand.title} workshop and head office are in {brand.city}, where every "
            f"piece is painted and packed."
        )
    if facet == "year":
        return (
            f"{brand.title} opened in {brand.year}; its first toys were cut from {brand.material}."
        )
    raise ValueError(f"unknown facet {facet!r}")


def catalogue_text(shape: str, colour: str, brand: Brand) -> str:
    """The catalogue entry of one colour-shape-brand product line."""
    return f"{brand.title} {shape} in {colour}. Painted toy shape from the {brand.title} range."


def listing_text(sku: int, price: str, rng: random.Random) -> str:
    """A shop listing's text: price and logistics only; the product is in its photo."""
    stock = rng.choice(
        ["in stock", "ships in 2 days", "last few left", "back in stock", "ships next week"]
    )
    return f"Listing {sku}. Price {price}, {stock}."


# ---------------------------------------------------------------------------
# query templates: varied phrasings; QA ones end with '?', modification ones do not start
# with a wh-word (the method's routing rule), exactly as a curated benchmark would be.

T2I = (
    "a {colour} {shape} made by {brand}",
    "the {colour} {shape} with the {brand} label",
    "{brand} {shape}, {colour}",
    "find {brand}'s {colour} {shape}",
    "photo of a {colour} {shape} toy from {brand}",
    "{colour} {shape} by {brand}",
)
# Text -> text: the last phrasing of each facet is kept for the test split, so no test query
# text appears in training.
T2T = {
    "founder": (
        "Which brand was started by {founder}?",
        "toy company founded by {founder}",
        "the maker whose founder is {founder}",
        "{founder} set up which label?",
    ),
    "city": (
        "Which toy maker is based in {city}?",
        "brand with its workshop in {city}",
        "shape maker headquartered in {city}",
        "the company that paints its toys in {city}",
    ),
    "year": (
        "Which brand opened in {year}?",
        "toy maker founded in {year}",
        "company that started making shapes in {year}",
        "a label that has existed since {year}",
    ),
}
T2IT = (
    "{brand} {colour} {shape} listed at {price}",
    "listing for a {colour} {shape} from {brand} at {price}",
    "{price} {brand} {shape} in {colour}",
    "buy the {colour} {brand} {shape} for {price}",
)
QA = {
    "founder": (
        "who founded the company that makes this?",
        "who started the brand shown here?",
        "whose firm produced this item?",
        "which person created the label on this product?",
    ),
    "city": (
        "where is the maker of this based?",
        "in what city does this brand have its workshop?",
        "which town is this product's company from?",
        "where was this toy painted and packed?",
    ),
    "year": (
        "when was the firm behind this founded?",
        "what year did the maker of this open?",
        "how old is the brand on this box?",
        "when did this company start out?",
    ),
}
MOD = {
    "colour": (
        "same one but in {colour}",
        "I want it in {colour} instead",
        "change the colour to {colour}",
        "make this {colour}",
        "in {colour} please, nothing else different",
    ),
    "shape": (
        "same maker and colour, but a {shape}",
        "swap the shape for a {shape}",
        "as a {shape} instead",
        "keep everything, turn it into a {shape}",
    ),
    "brand": (
        "the same item from {brand}",
        "I'd prefer the {brand} version",
        "same shape and colour but made by {brand}",
        "switch the maker to {brand}",
    ),
}
