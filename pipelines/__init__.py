"""pipelines: applied computer vision for medical imaging and remote sensing.

Task pipelines (``pipelines run TASK``) share one backbone registry (:mod:`pipelines.backbones`),
one config system (:mod:`pipelines.config`) and one run-folder format (:mod:`pipelines.runs`).
Every saved model loads with ``pipelines.load_model(path_or_run_dir)`` (:mod:`pipelines.models`).
"""

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def __getattr__(name: str):
    if name == "load_model":  # lazy: `import pipelines` stays free of torch
        from pipelines.models import load_model

        return load_model
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
