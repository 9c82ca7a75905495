"""Rows of docs/results.md for the papers' claims (issue 24's studies), training speed and the sparse form's stitch.

Kept apart from ``results_page.py`` (which imports :data:`KINDS` from here) so that each module
stays small. Every function takes a result file's content and returns ``(what, key figures)``;
every number has a fixed format, so the page is reproducible.
"""


from results_formats import _acc, _pct


def training_speed(data):
    medians, ratios = data.get("median_ms_per_image", {}), data.get("median_ratio_vs_old_qat16", {})
    figures = ", ".join(f"{name} {medians[name]:.3f} ms per image (x{ratios[name]:.2f})" for name in medians)
    return data.get("what", "training speed"), figures + " (x: against the old 16-bit training)"


def gate_threshold(data):
    first, last = (f"{t:g}" for t in (data["thresholds"][0], data["thresholds"][-1]))
    rows = data.get("rows", [])
    changed = [r for r in rows if r["decisions_changed"] > 0.001]
    what = (f"study 3 (Herrmann et al. supplement, Table 1): threshold tau {first} against {last} on "
            f"{len(rows)} shipped gated Fashion-MNIST presets; claim: a higher tau trades accuracy for MACs")
    figures = [f"{len(changed)} of {len(rows)} presets take a decision differently"]
    for r in rows:
        a, b = r["by_threshold"][first], r["by_threshold"][last]
        if r in changed:
            figures.append(f"{r['preset']}: top-1 {_acc(a['top1'])} -> {_acc(b['top1'])}, MACs "
                           f"{_pct(a['mac_ratio'])} -> {_pct(b['mac_ratio'])} of dense")
    unchanged = [r["preset"] for r in rows if r not in changed]
    if unchanged:
        figures.append("unchanged (no gate between the thresholds): " + ", ".join(unchanged))
    figures.append("paper's numbers: not readable here")
    return what, "; ".join(figures)


def densenet_exit_study(data):
    paper = data["paper"]
    what = (f"study 4 (Herrmann et al. supplement, section 1.2), early-exit DenseNet, inference; paper "
            f"({paper['dataset']}): {_pct(paper['top1'])} top-1 at {_pct(paper['layers_used'])} of the layers, "
            f"{_pct(paper['no_exit_top1'])} without exits")
    exits = ", ".join(
        f"exit {r['exit']}: {_pct(r['share_leaving'])} leave"
        + ("" if r["top1_on_images_leaving"] is None else
           f", its top-1 {_acc(r['top1_on_images_leaving'])} on them vs {_acc(r['top1_on_all_images'])} on all")
        for r in data["exits"]
    )
    figures = (f"routed top-1 {_acc(data['routed_top1'])} at {_pct(data['layers_used'])} of the layers and "
               f"{_pct(data['mac_ratio'])} of the MACs, final classifier on all {_acc(data['no_exit_top1'])}; {exits}; "
               f"verdict: {data['verdict']}")
    return what, figures


def sparse_stitch(data):
    what = f"gather against scatter stitch of the sparse form, `{data.get('preset')}`, sparse files and Keras predict"
    k = data["keras_predict_batch_256"]
    rows = [r for r in data["files"] if r["batch"] in (1, 256)]
    names = {"litert": "LiteRT", "onnxruntime": "ONNX Runtime"}
    speed = k["images_per_s"]
    figures = [f"Keras predict batch 256: gather {speed['gather']:.0f}, scatter {speed['scatter']:.0f} images/s "
               f"(gather / scatter {speed['gather'] / speed['scatter']:.2f}x)"]
    figures += [f"{names.get(r['runtime'], r['runtime'])} {r['threads']} thr batch {r['batch']}: gather / scatter "
                f"{r['gather_over_scatter']:.3f}" for r in rows]
    return what, "; ".join(figures)


def gate_polarization(data):
    what = (f"study 1 (Herrmann et al. supplement): polarization of Ind layer gates on `{data['preset']}` (9 gates, "
            f"target {data['target']:g}), {data['epochs']} epochs per setting; claim: Ind gates polarize, so "
            f"threshold inference matches sampling; rule: >= 80% of gates below 1% or above 99% open, threshold "
            f"top-1 >= stochastic, at least one block closed")
    figures = [f"{r['config']}: {_pct(r['polarized_share'])} polarized, threshold {_acc(r['threshold']['top1'])} "
               f"at activation {r['threshold']['gate_activation']:.3f}, stochastic {_acc(r['stochastic']['top1'])}"
               for r in data["rows"]]
    holding = data.get("claim_holds_in") or []
    verdict = f"reproduced only with {', '.join(holding)}" if holding else "not reproduced in any setting"
    return what, "; ".join(figures) + f"; verdict: {verdict}"


def prune_schedule_study(data):
    arms = data["arms"]
    what = (f"study 6 (SIPA Sec. 2.3): one-shot against iterative ({data['rounds']} rounds) magnitude pruning of "
            f"`sipa_fashion_mnist` to {_pct(data['sparsity'])}, and a dense control, {data['epochs']} fine-tuning "
            f"epochs of {data['images_per_epoch']:,} images each; claim: iterative pruning keeps accuracy one-shot "
            f"loses")
    figures = [f"{name.replace('_', ' ')} {_acc(a['test_top1'])} at {_pct(a['sparsity'])} sparsity "
               f"(16-bit score {a['score16']:.5f})" for name, a in arms.items()]
    figures.append(f"iterative - one-shot {100 * data['iterative_minus_one_shot']:+.2f} points, iterative - dense "
                   f"control {100 * data['iterative_minus_dense_control']:+.2f} points; verdict: {data['verdict']}")
    if "fine_tune_minus_reinit" in data:
        figures.append(f"one-shot fine-tuned - re-initialised {100 * data['fine_tune_minus_reinit']:+.2f} points: "
                       f"{data['reinit_verdict']}")
    return what, "; ".join(figures)


def _wins(claim):
    return f"{claim['wins']} of {claim['of']}"


def target_sweep(data):
    what = (f"study 2 (Herrmann et al. supplement, Table 2) as a sweep: Ind/Dep x PB/PG at targets "
            f"{', '.join(f'{t:g}' for t in sorted({r['target'] for r in data['rows']}))} on `{data['preset']}` "
            f"(9 gates), fine-tuned {data['epochs']} epochs from `{data['warm_start_from']}`; claims: PB beats PG, "
            f"Ind-PB beats Dep-PG, annealing the target from high to low helps at high targets")
    figures = [f"{r['kind'].capitalize()}-{r['loss'].upper()}{' annealed' if r['annealed'] else ''} t={r['target']:g}: "
               f"{_acc(r['threshold']['top1'])} at activation {r['threshold']['gate_activation']:.3f}"
               for r in data["rows"]]
    c = data["claims"]
    figures.append(f"Ind-PB beats Ind-PG {_wins(c['ind_pb_beats_ind_pg'])}, Dep-PB beats Dep-PG "
                   f"{_wins(c['dep_pb_beats_dep_pg'])}, Ind-PB beats Dep-PG {_wins(c['ind_pb_beats_dep_pg'])}, "
                   f"annealing beats the constant target {_wins(c['annealing_beats_constant'])}, threshold >= "
                   f"stochastic {_wins(c['threshold_at_least_stochastic'])}; paper's numbers: not readable here")
    return what, "; ".join(figures)


def cond_vs_prune(data):
    targets = ", ".join(f"{t:g}" for t in sorted({r["target"] for r in data["rows"] if r["target"] is not None}))
    what = (f"study 3 (Herrmann et al. supplement, Table 1): Cond (data-dependent) against Prune (data-independent) "
            f"channel gates at targets {targets} on `{data['preset']}`, fine-tuned {data['epochs']} epochs from "
            f"`{data['warm_start_from']}`")
    figures = []
    for r in data["rows"]:
        label = r["kind"] if r["target"] is None else f"{r['kind']} t={r['target']:g}"
        figures.append(f"{label}: {_acc(r['top1'])} at {_pct(r['mac_fraction'])} of the MACs")
    claims = data["claims"]
    for key in sorted(k for k in claims if not k.endswith("_at_equal_macs")):
        arm = key[: -len("_beats_prune")].replace("cond_x", "Cond x").replace("cond", "Cond")
        equal = claims.get(key.replace("beats_prune", "beats_prune_at_equal_macs"))
        at_equal = f", at equal MACs {_wins(equal)}" if equal and equal["of"] else ", at equal MACs: no overlap"
        figures.append(f"{arm} beats Prune at the same target {_wins(claims[key])}{at_equal}")
    figures.append("paper's numbers: not readable here")
    return what, "; ".join(figures)


def sipa_learned_pruning(data):
    gates = data["gate_settings"]
    what = (f"study 9: learned channel pruning on `{data['preset']}` (Ind gates of {gates['granularity']} channels, "
            f"target {gates['target']:g} of the gated MACs, gate gradients x{gates['gradient_scale']:g}, from "
            f"`{data['warm_start_from']}`), then a frozen-gate fine-tune of {data['fine_tune']['epochs']} epochs, "
            f"against magnitude pruning to 50%; goal: within 0.5 points of magnitude pruning at 50% of the MACs, "
            f"removed by folding")
    figures = []
    for r in data["rows"]:
        if "phase" in r:
            figures.append(f"{r['config']}: {_acc(r['top1'])} at {_pct(r['folded_mac_fraction'])} of the MACs after "
                           f"folding ({r['polarized_share']:.0%} of {r['gates']} gates polarized)")
        elif r["config"] == "dense parent":
            figures.append(f"dense parent: {_acc(r['top1'])}")
        else:
            figures.append(f"{r['config']}: {_acc(r['top1'])} (unstructured zeros: every MAC kept in a dense runtime)")
    c = data["claims"]
    figures.append(f"gap to magnitude pruning {c['gap_points']:+.2f} points; verdict: {c['verdict']}")
    return what, "; ".join(figures)


KINDS = {
    "sipa_learned_pruning": sipa_learned_pruning,
    "target_sweep": target_sweep,
    "cond_vs_prune": cond_vs_prune,
    "gate_polarization": gate_polarization,
    "prune_schedule_study": prune_schedule_study,
    "sparse_stitch": sparse_stitch,
    "training_speed": training_speed,
    "gate_threshold": gate_threshold,
    "densenet_exit_study": densenet_exit_study,
}
