"""tfgated.zoo: the papers' gated architectures, presets and model cards.

>>> import tfgated.zoo
>>> tfgated.zoo.list_models("sipa*")
>>> model = tfgated.zoo.load("sipa_fashion_mnist")   # compiled, ready for fit

See :mod:`tfgated.zoo.registry` for the contract between the registry and the
family modules, and ``python -m tfgated.zoo list`` / ``info NAME`` for the CLI.
"""

from tfgated.zoo.registry import (
    build,
    compile_model,
    get_preset,
    info,
    list_families,
    list_models,
    load,
    preset_recipe,
    register_family,
    register_preset,
    sha256_file,
    weights_status,
)

__all__ = [
    "build",
    "compile_model",
    "get_preset",
    "info",
    "list_families",
    "list_models",
    "load",
    "preset_recipe",
    "register_family",
    "register_preset",
    "sha256_file",
    "weights_status",
]
