"""Installs tfgated: gated efficient networks for Keras 3, with TFLite/ONNX export.

The top-level folders ``zoo/`` and ``export/`` are the subpackages ``tfgated.zoo``
and ``tfgated.export`` (see docs/layout.md), mapped with ``package_dir``.
"""

from setuptools import find_packages, setup

#: The package folders mapped to a package name other than their path.
MAPPED = {"tfgated.zoo": "zoo", "tfgated.export": "export"}


def _packages():
    """Every package: ``tfgated`` and its subpackages, and the mapped folders with theirs."""
    packages = find_packages(include=["tfgated", "tfgated.*"])
    for name, folder in MAPPED.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(packages)


setup(
    name="tfgated",
    version="0.1.0",
    description=(
        "Gumbel-softmax gated networks and the SIPA workflow for Keras 3, "
        "with a model zoo and TFLite/ONNX export that folds the gates."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=_packages(),
    package_dir={"tfgated": "tfgated", **MAPPED},
    package_data={"tfgated.zoo": ["*.json", "cards/*.md", "weights/*"], "tfgated.cli.pipeline": ["budgets.json"]},
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.18,<2.22",
        "keras>=3.13,<4",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9",
        "keras-tuner>=1.4.7,<1.5",
        "tf2onnx>=1.16",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "ai-edge-litert>=1.2",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
    },
    entry_points={"console_scripts": ["tfgated=tfgated.__main__:main"]},
)
