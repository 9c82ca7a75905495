"""EfficientNet (MBConv) block arguments as SIPA's reference code writes them.

A block string ``"r1_k3_s1_e6_i16_o24_se0.2"`` reads: repeats 1, kernel 3,
stride 1, expansion 6, 16 input and 24 output channels, squeeze-and-excitation
ratio 0.2; a trailing ``_noskip`` drops the identity shortcut. The zoo's SIPA
family builds networks from them and :mod:`tfgated.search` searches over them,
so the codec lives here, below both.
"""

from __future__ import annotations

import re

#: SIPA's searched blocks (reference ``models/utils.py``, before width scaling).
SIPA_REFERENCE_BLOCKS = (
    "r1_k3_s1_e1_i24_o16_se0.2",
    "r1_k3_s1_e6_i16_o24_se0.2",
    "r2_k3_s2_e6_i24_o40_se0.2",
    "r1_k3_s1_e6_i40_o56_se0.2",
    "r2_k3_s1_e6_i56_o72_se0.2",
    "r2_k3_s2_e6_i72_o88_se0.2",
    "r1_k3_s1_e6_i88_o104_se0.2",
)

_BLOCK_PATTERN = re.compile(r"^r(\d+)_k(\d+)_s(\d)_e(\d+)_i(\d+)_o(\d+)(?:_se([0-9.]+))?(_noskip)?$")


def decode_block(block):
    """Decode one block string ``"r1_k3_s1_e6_i16_o24_se0.2"`` (or a dict with the
    keys ``repeats, kernel, stride, expand, filters_in, filters_out, se_ratio,
    id_skip``) into a dict with those keys."""
    if isinstance(block, dict):
        required = {"repeats", "kernel", "stride", "expand", "filters_in", "filters_out"}
        missing = sorted(required - set(block))
        if missing:
            raise ValueError(f"Block {block!r} lacks the keys {missing}.")
        return {"se_ratio": None, "id_skip": True, **block}
    match = _BLOCK_PATTERN.match(str(block))
    if not match:
        raise ValueError(
            "Expected a block string like 'r1_k3_s1_e6_i16_o24_se0.2' "
            f"(repeats, kernel, stride, expansion, in, out, SE ratio). Received: {block!r}"
        )
    repeats, kernel, stride, expand, filters_in, filters_out, se_ratio, noskip = match.groups()
    return {
        "repeats": int(repeats),
        "kernel": int(kernel),
        "stride": int(stride),
        "expand": int(expand),
        "filters_in": int(filters_in),
        "filters_out": int(filters_out),
        "se_ratio": float(se_ratio) if se_ratio else None,
        "id_skip": noskip is None,
    }


def encode_block(args):
    """The block string of a block dict (inverse of :func:`decode_block`)."""
    text = (
        f"r{int(args['repeats'])}_k{int(args['kernel'])}_s{int(args['stride'])}_e{int(args['expand'])}"
        f"_i{int(args['filters_in'])}_o{int(args['filters_out'])}"
    )
    if args.get("se_ratio") is not None:
        text += f"_se{float(args['se_ratio']):g}"
    if not args.get("id_skip", True):
        text += "_noskip"
    return text
