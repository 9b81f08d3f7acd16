"""blastscope: computer-aided diagnosis of acute lymphoblastic leukemia from blood-cell images.

The pipeline, one sub-package per stage::

    data -> annotate -> models -> engine -> metrics -> inference -> cli / gui

The public API is kept small; everything else lives in ``_private`` modules.
"""

from blastscope._problems import BlastscopeError, ProblemLog

__version__ = "0.1.0"

__all__ = ["BlastscopeError", "ProblemLog", "__version__"]
