"""The blastscope desktop app (``blastscope gui``): image, video and camera detection in a Qt 6 window.

Needs the ``gui`` extra (PySide6): ``pip install 'blastscope[gui]'``. Nothing else in blastscope
imports this package; it consumes :mod:`blastscope.inference` (the source iterator, the predictor's
typed results, the CSV writer and the drawing).

>>> from blastscope.gui import run_app   # doctest: +SKIP
>>> run_app(model="runs/exp/best.pt", conf=0.25)
"""

from blastscope.gui.app import MODES, MainWindow, run_app

__all__ = ["MainWindow", "run_app", "MODES"]
