"""Automatic annotation: the box of a segmented single cell on black, written as Pascal VOC XML.

:func:`cell_box` finds the cell in one image; :func:`annotate` boxes every image of a manifest and
writes one XML per image in the structure of the paper's Fig. 4 (LabelImg opens it). White cells
of smears are found by a :class:`CellFinder` (:class:`StainFinder` needs no training).
"""

from blastscope.annotate.annotator import (
    AnnotateResult,
    annotate,
    annotate_manifest,
    folder_rows,
)
from blastscope.annotate.autobox import cell_box, cell_mask
from blastscope.annotate.finder import CellFinder, FoundCells, StainFinder, StainSettings

__all__ = [
    "AnnotateResult", "annotate", "annotate_manifest", "cell_box", "cell_mask", "folder_rows",
    "CellFinder", "FoundCells", "StainFinder", "StainSettings",
]  # fmt: skip
