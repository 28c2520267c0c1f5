"""Product photos: easy-vqa's shapes composed above a printed brand label only OCR reads."""

from __future__ import annotations

import random
import re

from PIL import Image, ImageDraw, ImageFont

from rar_pipeline.core.demo.world import COLOURS, SHAPES

CANVAS = (160, 136)


def easy_vqa_labels(split: str) -> dict[int, tuple[str, str]]:
    """Shape and colour of every easy-vqa image, read off its question/answer pairs.

    An answer may name the shape or colour ("what color is the circle?" -> "red"); a yes/no
    answer affirms the shape and colour words of its question, unless the question is
    negated ("is there not a red shape?" -> "no" affirms red).
    """
    import easy_vqa

    questions = (
        easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    )
    shape: dict[int, str] = {}
    colour: dict[int, str] = {}
    for text, answer, image_id in zip(*questions, strict=True):
        words = re.findall(r"[a-z]+", text.lower())
        if answer in ("yes", "no"):
            negated = "not" in words or "no" in words
            if (answer == "yes") == negated:
                continue  # the question's words are denied, not affirmed
        else:
            words.append(answer)
        for word in words:
            if word in SHAPES:
                shape[image_id] = word
            elif word in COLOURS:
                colour[image_id] = word
    return {i: (shape[i], colour[i]) for i in sorted(shape.keys() & colour.keys())}


def easy_vqa_image_paths(split: str) -> dict[int, str]:
    """easy-vqa's own image files for a split."""
    import easy_vqa

    return easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()


def compose_product(shape_image: Image.Image, label: str, rng: random.Random) -> Image.Image:
    """Place a shape on a larger canvas above a printed brand label.

    The label is printed with Pillow's built-in font, which OCR reads reliably and which
    pretrained image features do not resolve into words.
    """
    shape_image = shape_image.convert("RGB")
    background = shape_image.getpixel((0, 0))
    canvas = Image.new("RGB", CANVAS, background)
    size = rng.randint(72, 88)
    shape = shape_image.resize((size, size), Image.Resampling.BICUBIC)
    x = rng.randint(6, CANVAS[0] - size - 6)
    canvas.paste(shape, (x, rng.randint(2, 8)))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=rng.choice((22, 24, 26)))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    width, height = right - left, bottom - top
    tx = max(2, min(CANVAS[0] - width - 2, (CANVAS[0] - width) // 2 + rng.randint(-12, 12)))
    ty = CANVAS[1] - height - rng.randint(6, 12) - top
    ink = rng.choice(((20, 20, 20), (40, 30, 90), (90, 20, 20), (10, 60, 30)))
    draw.text((tx, ty), label, fill=ink, font=font)
    return canvas
