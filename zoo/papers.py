"""The papers' own numbers for the zoo presets, each with the table or text it comes from.

Every preset's ``paper`` entry is built here, so that one test
(``tests/zoo/test_papers.py``) can compare all of them with a transcription of the
sources, digit for digit. An entry is plain data::

    {"source": "who, what",                  # the publication (and where its numbers were read)
     "table": "table, figure or section",     # where in it
     "numbers": {quantity: value},            # exactly as published; accuracies and shares as fractions
     "measured": {quantity: field},           # optional: the card shows this measured field beside it
     "note": "..."}                           # optional

``measured`` names a field of the preset's golden entry (``zoo/complexity.json``, e.g.
``params_without_bn``) or of its shipped weights' measurement (``zoo/weights/index.json``,
e.g. ``top1``); the card (``python -m tfgated.zoo.make_golden``) prints both side by side.

Only numbers that could be read in a source are here. The Gumbel paper's result tables
(ECCV 2020, Tables 1-2, Figures 3, 5-8) and the SIPA paper's Table 1 could not be read
where this was written (no copy of either PDF was available): SIPA's numbers come from
the authors' reference README, which reports the same challenge entry; the Gumbel
numbers from the abstract, the authors' README, a footnote of the ECCV chapter, section
1.1 of the supplement, and the paper's ResNet-110 figures as quoted in the authors'
issue tracker (said so in each entry).
"""

from __future__ import annotations

GUMBEL_PAPER = "Herrmann, Bowen, Zabih: Channel selection using Gumbel Softmax, ECCV 2020"
GUMBEL_SUPPLEMENT = GUMBEL_PAPER + ", supplement"
GUMBEL_CODE = "github.com/irwinherrmann/stochastic-gates"
SIPA_PAPER = (
    "Lee, Bae, Oh, Yun: SIPA: A Simple Framework for Efficient Networks (MicroNet Challenge 2019, CIFAR-100 track)"
)
SIPA_README = "the authors' reference README, github.com/Lee-Gihun/MicroNet_OSI-AI (commit fb0163a)"
FASHION_BENCHMARK = "Fashion-MNIST benchmark table (zalandoresearch/fashion-mnist README)"


def _entry(source, table, numbers, measured=None, note=None):
    entry = {"source": source, "table": table, "numbers": dict(numbers)}
    if measured:
        entry["measured"] = dict(measured)
    if note:
        entry["note"] = note
    return entry


# -- SIPA (CIFAR-100) ----------------------------------------------------------------------

#: README section 3 "Scoring metric": the 32-bit counting table ("obtained by hand", BatchNorm
#: excluded) and the 16-bit scores of each stage; the README's first line gives the accuracy.
_SIPA_MAIN = {
    "params_32bit_reference": 470776,
    "mults_32bit_reference": 60456692,
    "adds_32bit_reference": 57132604,
    "math_ops_32bit_reference": 117589296,
    "storage_score_16bit_before_pruning": 0.006534,
    "math_score_16bit_before_pruning": 0.008447,
    "score_16bit_before_pruning": 0.014981,
    "sparsity_after_pruning": 0.64,
    "storage_score_16bit_after_pruning": 0.002833,
    "math_score_16bit_after_pruning": 0.003267,
    "score_16bit_after_pruning": 0.006100,
}
_SIPA_FINAL = {
    "cifar100_top1_final": 0.8004,
    "storage_score_final": 0.002995,
    "math_score_final": 0.002803,
    "micronet_score_final": 0.005798,
}
#: README section 3 (second counting table) and section 2-4 (the exit position table, row
#: MBConvBlock[4], thresholds 0.85 / 0.88 / 0.9, measured on a 60%-pruned model) and the
#: "After Early Exiting" / "After Pruning Early Exiting" scores.
_SIPA_EXIT = {
    "exit_head_params_reference": 20660,
    "exit_head_mults_reference": 1717436,
    "exit_head_adds_reference": 1596564,
    "exit_head_math_ops_reference": 3314000,
    "params_with_exit_32bit_reference": 491436,
    "math_ops_with_exit_32bit_reference": 120903296,
    "exit_path_flops_block4": 47043295,
    "exit_path_flops_share_block4": 0.3891,
    "exit_ratio_block4_thresholds_085_088_090": (0.3631, 0.3327, 0.3111),
    "top1_block4_thresholds_085_088_090": (0.7994, 0.8011, 0.8019),
    "exit_top1_block4_threshold_0": 0.6462,
    "score_block4_thresholds_085_088_090": (0.006208, 0.006274, 0.006321),
    "exit_threshold": 0.85,
    "exit_ratio_after_exit": 0.3217,
    "score_16bit_after_exit": 0.005977,
    "exit_sparsity": 0.5,
    "exit_ratio_final": 0.2929,
}
_SIPA_TABLE = (
    "reference README: section 3 \"Scoring metric\" (16-bit scores of each stage; the 32-bit counting table, "
    "BatchNorm excluded) and its first line (80.04% top-1, score 0.0058)"
)
_SIPA_NOTE = (
    "The SIPA paper's own Table 1 could not be read here; the reference README reports the same "
    "challenge entry with more digits. Storage and math scores are fractions of WideResNet-28-10's "
    "36.5M parameters and 10.49B operations."
)

SIPA_CIFAR100 = _entry(
    f"{SIPA_PAPER}; numbers from {SIPA_README}",
    _SIPA_TABLE,
    {**_SIPA_MAIN, **_SIPA_FINAL},
    measured={"params_32bit_reference": "params_without_bn"},
    note=_SIPA_NOTE,
)
SIPA_CIFAR100_EXIT = _entry(
    f"{SIPA_PAPER}; numbers from {SIPA_README}",
    _SIPA_TABLE + "; section 2-4 (exit position table, row MBConvBlock[4]) and the second counting table",
    {**_SIPA_EXIT, **_SIPA_FINAL},
    measured={"params_with_exit_32bit_reference": "params_without_bn"},
    note=_SIPA_NOTE,
)
SIPA_FASHION = _entry(
    f"{SIPA_PAPER}; numbers from {SIPA_README}",
    "none for Fashion-MNIST (the paper and README report CIFAR-100 only); the CIFAR-100 final entry for scale",
    {"cifar100_micronet_score_final": 0.005798, "cifar100_sparsity_after_pruning": 0.64},
    measured={"cifar100_micronet_score_final": "micronet_score_16bit", "cifar100_sparsity_after_pruning": "sparsity"},
    note="A reference point, not a target: the CIFAR-100 model is 10x the classes on 3-channel images.",
)

SIPA_FASHION_EXIT = _entry(
    f"{SIPA_PAPER}; numbers from {SIPA_README}",
    "none for Fashion-MNIST; section 2-4 (exit position table, row MBConvBlock[4], CIFAR-100) for scale",
    {"cifar100_exit_path_flops_share_block4": _SIPA_EXIT["exit_path_flops_share_block4"],
     "cifar100_exit_ratio_block4_threshold_085": _SIPA_EXIT["exit_ratio_block4_thresholds_085_088_090"][0],
     "cifar100_exit_threshold": _SIPA_EXIT["exit_threshold"]},
    measured={"cifar100_exit_ratio_block4_threshold_085": "exit_ratio", "cifar100_exit_threshold": "exit_threshold"},
    note="The same exit position and threshold as the CIFAR-100 entry; on Fashion-MNIST's easier images far "
    "more of them leave at the exit.",
)


# -- Gumbel paper: ResNet ------------------------------------------------------------------

_IMAGENET_REDUCTION = {"imagenet_resnet_computation_reduction": "45-52%"}
_ABSTRACT = "abstract (ImageNet ResNets: 45-52% less computation)"
_RESNET50_CODE = {"reference_code_resnet50_top1": 0.7614, "reference_code_resnet50_flops_share": 0.55}
_RESNET50_FLOPS = {"resnet50_baseline_gflops": 4.028}


def gumbel_imagenet_resnet(depth, level="layer"):
    """The paper's numbers for a gated ImageNet ResNet preset (``level``: layer or channel gates)."""
    numbers = dict(_IMAGENET_REDUCTION)
    table = _ABSTRACT
    if depth == 50:
        numbers.update(_RESNET50_FLOPS)
        numbers.update(_RESNET50_CODE)
        table += (
            "; footnote 2 of the ECCV chapter (their ResNet-50 count: 4.028 GFLOPs); "
            f"{GUMBEL_CODE} README (ResNet-50: 76.14 top-1 at 55% of the FLOPs, configuration not named)"
        )
    if level == "channel":
        numbers.update({"filters_per_gate_expansion": (16, 32, 64, 128), "filters_per_gate_contraction": "half"})
        table += "; supplement section 1.1 (ResNet-50 granularity)"
    return _entry(
        GUMBEL_SUPPLEMENT if level == "channel" else GUMBEL_PAPER,
        table,
        numbers,
        note="Per-configuration results (Ind/Dep x PB/PG x t) are in the paper's tables, which could not be read here.",
    )


#: The paper's ResNet-110 CIFAR-10 figures, as quoted by a user in the authors' issue tracker
#: (issues 3 and 4: "table 3", dependent gates, t=0.6); the authors' reply does not dispute them.
_RESNET110_QUOTE = (
    f"paper \"table 3\" as quoted in {GUMBEL_CODE} issues 3 and 4 (the paper itself could not be read here; "
    "the quote names dependent gates and t=0.6, not the loss)"
)


def gumbel_resnet110(kind, target):
    """The paper's numbers for a gated CIFAR-10 ResNet-110 preset."""
    numbers = {"resnet110_baseline_top1": 0.9339}
    if kind == "dependent" and target == 0.6:
        numbers.update({"top1": 0.9436, "flops_share": 0.65})
    return _entry(GUMBEL_PAPER, _RESNET110_QUOTE, numbers)


RESNET110_CIFAR10 = _entry(
    "He, Zhang, Ren, Sun: Deep Residual Learning for Image Recognition, CVPR 2016; and " + GUMBEL_PAPER,
    "He et al. Table 6 (CIFAR-10); the Gumbel paper's baseline " + _RESNET110_QUOTE,
    {"test_error_best": 6.43, "test_error_mean": 6.61, "test_error_std": 0.16, "params_m": 1.7,
     "gumbel_paper_baseline_top1": 0.9339},
    note="He et al. use option-A (zero-padding) shortcuts; ours are option B (1x1 conv + BN).",
)


def keras_applications_resnet(depth):
    """keras.applications' ImageNet numbers for the dense ResNet-50/101 (the weights they load)."""
    numbers = {50: {"top1": 0.749, "top5": 0.921}, 101: {"top1": 0.764, "top5": 0.928}}[depth]
    entry = _entry(
        f"keras.applications ResNet{depth} ImageNet weights (keras.io/api/applications)",
        "keras.io applications table",
        numbers,
    )
    if depth == 50:
        entry["numbers"].update(_RESNET50_FLOPS)
        entry["table"] += "; " + GUMBEL_PAPER + ", footnote 2 (their ResNet-50 count: 4.028 GFLOPs)"
        entry["measured"] = {"resnet50_baseline_gflops": "macs"}
    return entry


FASHION_RESNET = _entry(
    FASHION_BENCHMARK,
    "benchmark",
    {"two_conv_under_100k_params_accuracy": 0.925},
    measured={"two_conv_under_100k_params_accuracy": "top1"},
    note="Reference point only; the Gumbel paper has no Fashion-MNIST results.",
)


# -- Gumbel paper: MobileNetV2 and DenseNet ------------------------------------------------------

#: Supplement section 1.1, the MobileNetV2 granularity table: t, c, n, s, g_inp, g_out, g_exp.
MOBILENET_V2_GRANULARITY = (
    (1, 16, 1, 1, 8, 8, 16),
    (6, 24, 2, 2, 8, 8, 24),
    (6, 32, 3, 2, 8, 16, 24),
    (6, 64, 4, 2, 8, 16, 32),
    (6, 96, 3, 1, 16, 32, 48),
    (6, 160, 3, 2, 16, 32, 64),
    (6, 320, 1, 1, 32, 64, 64),
)

GUMBEL_MOBILENET_V2 = _entry(
    GUMBEL_SUPPLEMENT + "; arXiv 1812.04180 (2019 version, \"An end-to-end approach for speeding up neural "
    "network inference\")",
    "supplement section 1.1 (granularity table: t, c, n, s, g_inp, g_out, g_exp); the 2019 arXiv abstract",
    {"granularity_table": MOBILENET_V2_GRANULARITY, "mobilenet_v2_computation_reduction": "19-37%"},
    note="The ECCV version's MobileNetV2 results could not be read here.",
)
MOBILENET_V2_IMAGENET = _entry(
    "Sandler et al.: MobileNetV2, CVPR 2018 (the Gumbel paper's dense baseline)",
    "Table 4",
    {"top1": 0.72, "params": 3_400_000, "madds": 300_000_000},
    measured={"params": "params", "madds": "macs"},
)
FASHION_MOBILENET = _entry(
    FASHION_BENCHMARK, "Benchmark: MobileNet", {"accuracy": 0.950}, measured={"accuracy": "top1"},
    note="Reference point only; the Gumbel paper has no Fashion-MNIST results.",
)
DENSENET_CIFAR10_EXIT = _entry(
    GUMBEL_SUPPLEMENT,
    "section 1.2, Additional early exit details (DenseNet on CIFAR-10)",
    {},
    note=(
        "Not transcribed: the only readable copy of the supplement (vdocuments.us) ends in section 1.2's "
        "opening paragraph, before its results. Section 1.2 places the exit gates and intermediate "
        "classifiers at the end of each dense block, following MSDNet."
    ),
)
FASHION_DENSENET = _entry(
    FASHION_BENCHMARK, "Benchmark: DenseNet-BC 768K", {"accuracy": 0.954}, measured={"accuracy": "top1"},
    note="The dense DenseNet-BC 768K of the benchmark, a reference point rather than a target for this small model.",
)
