"""Colours of the pictures: one outline colour per label id (also the ``color`` column of the
segment look-up tables) and the colour maps of grey images and difference maps."""

from __future__ import annotations

#: Outline colours for common aseg ids (RGB); others get a colour from their id.
LABEL_COLOURS: dict[int, tuple[int, int, int]] = {
    2: (245, 245, 245), 41: (245, 245, 245),  # white matter
    3: (230, 148, 34), 42: (230, 148, 34),  # cortex
    4: (120, 18, 134), 43: (120, 18, 134),  # lateral ventricle
    5: (196, 58, 250), 44: (196, 58, 250),  # inferior lateral ventricle
    17: (220, 216, 20), 53: (220, 216, 20),  # hippocampus
    24: (60, 60, 255),  # CSF
}

#: Grey images.
GREY_MAP = "gray"
#: Signed differences: blue where darker, red where brighter, white where equal (symmetric limits).
DIFFERENCE_MAP = "RdBu_r"
#: Outline of the structures a prompt names (as in the evaluate montage).
NAMED_OUTLINE = "#ffd400"


def label_colour(label: int) -> tuple[int, int, int]:
    """RGB 0..255 of a label id."""
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    h = (label * 2654435761) & 0xFFFFFF
    return (h >> 16 & 255, h >> 8 & 255, h & 255)


def label_colour_rgb(label: int) -> tuple[float, float, float]:
    """The colour of a label id as matplotlib's 0..1 RGB."""
    r, g, b = label_colour(label)
    return (r / 255, g / 255, b / 255)
