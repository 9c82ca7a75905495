"""The parity verdicts: float16 agreement is judged on the examples float16 rounding cannot flip."""

import numpy as np

from tfgated.export.parity import FLOAT16_MARGIN, compare, decisive_examples


def test_near_ties_do_not_fail_float16():
    """A near-chance model: most examples are near ties whose top-1 float16 may flip."""
    rng = np.random.RandomState(0)
    reference = np.full((200, 10), 0.1, "float32") + rng.uniform(-1e-4, 1e-4, (200, 10)).astype("float32")
    reference[:20, 3] += 0.2  # 20 decisive examples
    flipped = reference.copy()
    ties = np.arange(20, 200)
    flipped[ties] = flipped[ties][:, ::-1]  # every near tie flips (within 2e-4)
    result = compare(reference, flipped, "float16")
    assert result["top1_agreement"] < 0.2
    assert result["decisive_examples"] == 20 and result["top1_agreement_decisive"] == 1.0
    assert result["passed"]


def test_a_flip_of_a_decisive_example_fails_float16():
    reference = np.eye(10, dtype="float32")[np.arange(100) % 10] * 0.9 + 0.01
    outputs = reference.copy()
    outputs[0] = np.roll(outputs[0], 1)  # 1 of 100 decisive examples disagrees: 99 % < 99.5 %
    result = compare(reference, outputs, "float16")
    assert result["decisive_examples"] == 100 and not result["passed"]


def test_decisive_examples_threshold():
    reference = np.array([[0.5, 0.5 - FLOAT16_MARGIN / 2], [0.5, 0.5 - 2 * FLOAT16_MARGIN]], "float32")
    assert decisive_examples(reference).tolist() == [False, True]


def test_all_ties_fall_back_to_the_difference():
    reference = np.full((8, 4), 0.25, "float32")
    assert compare(reference, reference + 1e-3, "float16")["passed"]
    assert not compare(reference, reference + 0.5, "float16")["passed"]
