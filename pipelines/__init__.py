"""pipelines: applied computer vision for medical imaging and remote sensing.

Task pipelines (``pipelines run TASK``) share one backbone registry (:mod:`pipelines.backbones`),
one config system (:mod:`pipelines.config`) and one run-folder format (:mod:`pipelines.runs`).
"""

__version__ = "0.1.0"
