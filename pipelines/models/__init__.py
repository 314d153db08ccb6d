"""One format for every saved model: a :class:`ModelSpec` in the safetensors header, one loader.

Example:
    >>> from pipelines.models import load_model, save_model, classifier_spec
    >>> save_model(model, classifier_spec("efficientnet_b0", ["a", "b"], 224), "m.safetensors")
    >>> loaded = load_model("m.safetensors")          # or a run folder
    >>> loaded.model(torch.zeros(1, 3, 224, 224)).shape, loaded.spec.output
    (torch.Size([1, 2]), 'softmax')
"""

from pipelines.models.files import (
    LoadedModel,
    checkpoint_saver,
    load_model,
    read_spec,
    resolve_weights,
    save_ensemble,
    save_model,
)
from pipelines.models.kinds import (
    SoftVote,
    build_module,
    classifier_spec,
    detector_spec,
    ensemble_spec,
    generator_spec,
    known_kinds,
    register_kind,
    segmenter_spec,
)
from pipelines.models.spec import FORMAT, SPEC_KEY, InputSpec, ModelSpec

__all__ = [
    "ModelSpec", "InputSpec", "SPEC_KEY", "FORMAT", "LoadedModel", "save_model", "checkpoint_saver", "load_model",
    "read_spec", "resolve_weights", "save_ensemble", "build_module", "register_kind", "known_kinds", "SoftVote",
    "classifier_spec", "segmenter_spec", "detector_spec", "generator_spec", "ensemble_spec",
]
