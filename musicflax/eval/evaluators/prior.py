"""How well a prior models a split's codes: bits per code and per second and top-1 accuracy,
beside what simple models fit on the training codes achieve on the same codes (uniform,
unigram, bigram), over every code of the split (non-overlapping windows of the context)."""

from __future__ import annotations

import math

import numpy as np


def baseline_bits(train, evaluated) -> dict[str, float]:
    """Bits per code of simple models fit on the train CodeSet.

    uniform_bits = log2 K; unigram_bits = entropy of the training code distribution;
    unigram_xent_bits / bigram_xent_bits: cross-entropies on the evaluated codes of the
    unigram and of a bigram model of the training codes (add-one smoothing): what a prior's
    bits on those codes compare with.
    """
    k = train.codebook_size
    counts = np.bincount(train.codes, minlength=k).astype(np.float64)
    p = counts / counts.sum()
    smoothed = (counts + 1) / (counts.sum() + k)
    pairs = np.ones((k, k))
    for seq in train.sequences():
        np.add.at(pairs, (seq[:-1], seq[1:]), 1)
    pairs /= pairs.sum(axis=1, keepdims=True)
    bits = [-np.log2(pairs[s[:-1], s[1:]]) for s in evaluated.sequences() if len(s) > 1]
    return {"uniform_bits": float(np.log2(k)),
            "unigram_bits": float(-np.sum(p[p > 0] * np.log2(p[p > 0]))),
            "unigram_xent_bits": float(-np.mean(np.log2(smoothed[evaluated.codes]))),
            "bigram_xent_bits": float(np.mean(np.concatenate(bits)))}


def run(ctx, cfg) -> dict:
    del cfg
    prior = ctx.prior
    if prior is None:
        return {"skipped": "no prior given (--config.evals.prior.workdir=...)"}
    task = prior.task
    data = None if ctx.is_prior else ctx.task.config.data
    split_codes = task.codes(ctx.split, data)
    windows = task.eval_windows(ctx.split, split_codes)
    sums = {"nll": 0.0, "correct": 0.0, "codes": 0.0}
    for batch, out in prior.runner(task.eval_outputs, prior.state, ctx.batches(windows)):
        mask = np.asarray(batch["mask"], bool)
        sums = {k: sums[k] + float(np.sum(np.asarray(out[k])[mask])) for k in sums}
    bits = sums["nll"] / max(sums["codes"], 1.0) / math.log(2)
    section = {"bits_per_code": bits, "bits_per_second": bits * split_codes.codes_per_second,
               "accuracy": sums["correct"] / max(sums["codes"], 1.0),
               **baseline_bits(task.train_codes, split_codes)}
    section.update(reduction_vs_unigram=1.0 - bits / section["unigram_xent_bits"],
                   reduction_vs_bigram=1.0 - bits / section["bigram_xent_bits"],
                   codes=sums["codes"], codes_per_second=split_codes.codes_per_second,
                   context_codes=task.length, level=task.level, prior_step=int(prior.state.step))
    return section
