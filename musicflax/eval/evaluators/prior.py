"""How well a prior models a split's codes: bits per code and per second and top-1 accuracy,
beside what simple models fit on the training codes achieve on the same codes (uniform,
unigram, bigram), over every code of the split (non-overlapping windows of the context);
with `temperatures`, the bits under each sampling temperature and the best of them."""

from __future__ import annotations

import functools
import math

import numpy as np


def baseline_bits(train, evaluated) -> dict[str, float]:
    """Bits per code of simple models fit on the train CodeSet.

    uniform_bits = log2 K; unigram_bits = entropy of the training code distribution;
    unigram_xent_bits / bigram_xent_bits: cross-entropies on the evaluated codes of the
    unigram and of a bigram model of the training codes (add-one smoothing): what a prior's
    bits on those codes compare with. Residual-VQ tokens (S stages of K codes) are modelled
    as the prior models them: each within its position's stage (K = one stage's codebook).
    """
    stages = train.stages
    k = train.vocab_size // stages
    stage_of = np.arange(train.vocab_size) // k
    counts = np.bincount(train.codes, minlength=train.vocab_size).astype(np.float64)
    per_stage = counts.reshape(stages, k)
    p = per_stage / per_stage.sum(axis=1, keepdims=True)
    smoothed = ((per_stage + 1) / (per_stage.sum(axis=1, keepdims=True) + k)).ravel()
    # Add-one over the codes of the next position's stage only.
    pairs = (stage_of[None, :] == (stage_of[:, None] + 1) % stages).astype(np.float64)
    for seq in train.sequences():
        np.add.at(pairs, (seq[:-1], seq[1:]), 1)
    pairs /= pairs.sum(axis=1, keepdims=True)
    bits = [-np.log2(pairs[s[:-1], s[1:]]) for s in evaluated.sequences() if len(s) > 1]
    entropy = -np.sum(p * np.log2(np.where(p > 0, p, 1.0)), axis=1)  # 0 log 0 = 0
    return {"uniform_bits": float(np.log2(k)),
            "unigram_bits": float(np.mean(entropy)),
            "unigram_xent_bits": float(-np.mean(np.log2(smoothed[evaluated.codes]))),
            "bigram_xent_bits": float(np.mean(np.concatenate(bits)))}


def level_scores(ctx, prior, temperatures: tuple = ()) -> dict:
    """The bits of one prior on the split's codes of its level, with the baselines, and at
    each of `temperatures` (whether sampling at temperature 1 is calibrated)."""
    task = prior.task
    data = None if ctx.is_prior else ctx.task.config.data
    split_codes = task.codes(ctx.split, data)
    sums = {"nll": 0.0, "correct": 0.0, "codes": 0.0}
    tempered = np.zeros(len(temperatures))
    # The runner compiles once per function: the bound method itself when nothing is added
    # (validation during training), a new partial only for an offline report.
    outputs = functools.partial(task.eval_outputs, temperatures=temperatures) \
        if temperatures else task.eval_outputs
    for batch, out in prior.runner(outputs, prior.state,
                                   ctx.batches(task.eval_windows(ctx.split, data))):
        mask = np.asarray(batch["mask"], bool)
        sums = {k: sums[k] + float(np.sum(np.asarray(out[k])[mask])) for k in sums}
        if temperatures:
            tempered += np.asarray(out["nll_tempered"])[mask].sum(axis=0)
    bits = sums["nll"] / max(sums["codes"], 1.0) / math.log(2)
    section = {"bits_per_code": bits, "bits_per_second": bits * split_codes.codes_per_second,
               "accuracy": sums["correct"] / max(sums["codes"], 1.0),
               **baseline_bits(task.train_codes, split_codes)}
    section.update(reduction_vs_unigram=1.0 - bits / section["unigram_xent_bits"],
                   reduction_vs_bigram=1.0 - bits / section["bigram_xent_bits"],
                   bigram_bits_per_second=section["bigram_xent_bits"] * split_codes.codes_per_second,
                   codes=sums["codes"], codes_per_second=split_codes.codes_per_second,
                   context_codes=task.length,
                   context_seconds=task.length / split_codes.codes_per_second,
                   level=task.level, upper_level=task.upper_level,
                   prior_step=int(prior.state.step))
    if temperatures:
        at = tempered / max(sums["codes"], 1.0) / math.log(2)
        section["bits_per_code_at_temperature"] = {f"{t:g}": float(b)
                                                   for t, b in zip(temperatures, at)}
        section["best_temperature"] = float(temperatures[int(np.argmin(at))])
    return section


def run(ctx, cfg) -> dict:
    """One prior: its scores. A hierarchy: per level, and the bits per second of music the
    whole hierarchy spends to describe the finest level (the sum over its levels)."""
    if not ctx.priors:
        return {"skipped": "no prior given (--config.evals.prior.workdir=...)"}
    temperatures = tuple(float(t) for t in cfg.get("temperatures", ()))
    if len(ctx.priors) == 1:
        return level_scores(ctx, ctx.priors[0], temperatures)
    section = {f"level{p.task.level}": level_scores(ctx, p, temperatures) for p in ctx.priors}
    section["total_bits_per_second"] = sum(v["bits_per_second"] for v in section.values())
    return section
