"""Linear probes on frozen features (a JAX objective, scipy's L-BFGS): multinomial and
multi-label logistic regression, accuracy, balanced accuracy, the majority class and
micro-averaged average precision.

Both probes standardise features with the training mean and standard deviation and minimise
the mean training loss plus (l2 / 2)·‖W‖² (the biases are not penalised) with full-batch
L-BFGS. The objective is strictly convex and the solver has no randomness, so a probe is a
deterministic function of its training data.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special


@dataclasses.dataclass(frozen=True)
class _AffineProbe:
    """scores = standardise(features) @ weights + bias."""
    mean: np.ndarray     # [D]
    std: np.ndarray      # [D]
    weights: np.ndarray  # [D, K]
    bias: np.ndarray     # [K]

    def scores(self, features) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) / self.std @ self.weights + self.bias


class LinearProbe(_AffineProbe):
    """Multinomial logistic regression over num_classes classes."""

    def predict_proba(self, features) -> np.ndarray:
        return special.softmax(self.scores(features), axis=-1)

    def predict(self, features) -> np.ndarray:
        return np.argmax(self.scores(features), axis=-1)

    def accuracy(self, features, labels) -> float:
        return accuracy(self.predict(features), labels)


class MultilabelProbe(_AffineProbe):
    """One binary logistic regression per output (pitch), fitted together."""

    def predict_proba(self, features) -> np.ndarray:
        return special.expit(self.scores(features))


def _cross_entropy(logits, one_hot):
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def _binary_cross_entropy(logits, targets):
    return jnp.mean(jnp.sum(jax.nn.softplus(logits) - targets * logits, axis=-1))


@functools.partial(jax.jit, static_argnames="loss")
def _objective(params, x, targets, l2, loss):
    """loss(x @ W + b, targets) + (l2 / 2)·‖W‖² and its gradient; params = [W.ravel(), b]."""
    def value(params):
        dims, outputs = x.shape[1], targets.shape[1]
        w = params[:dims * outputs].reshape(dims, outputs)
        return loss(x @ w + params[dims * outputs:], targets) + 0.5 * l2 * jnp.sum(w ** 2)
    return jax.value_and_grad(value)(params)


def _fit(features, targets, loss, l2: float, steps: int) -> tuple[np.ndarray, ...]:
    """(mean, std, weights, bias) minimising loss(logits, targets) + (l2 / 2)·‖W‖² with
    L-BFGS, in float64. The objective is one XLA computation: numpy's separate elementwise
    passes over the [N, K] logits took 2.4x as long per evaluation."""
    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    # Constant features would divide by zero; leaving them unscaled keeps them at exactly 0.
    std = features.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    dims, outputs = features.shape[1], targets.shape[1]
    with jax.enable_x64(True):
        x = jnp.asarray((features - mean) / std)
        y = jnp.asarray(targets, jnp.float64)

        def objective(params):
            value, grad = _objective(jnp.asarray(params), x, y, l2, loss)
            return float(value), np.asarray(grad, np.float64)
        result = optimize.minimize(objective, np.zeros((dims + 1) * outputs), jac=True,
                                   method="L-BFGS-B", options={"maxiter": steps})
    weights = result.x[:dims * outputs].reshape(dims, outputs)
    return mean, std, weights, result.x[dims * outputs:]


def train_linear_probe(features, labels, num_classes: int, l2: float = 1e-3,
                       steps: int = 500) -> LinearProbe:
    """Fits softmax regression of integer labels [N] on features [N, D]."""
    one_hot = np.eye(num_classes)[np.asarray(labels)]
    return LinearProbe(*_fit(features, one_hot, _cross_entropy, l2, steps))


def train_multilabel_probe(features, targets, l2: float = 1e-3,
                           steps: int = 500) -> MultilabelProbe:
    """Fits independent logistic regressions of binary targets [N, P] on features [N, D].

    The loss is the per-output binary cross-entropy summed over outputs and averaged over
    items; it separates over outputs, so its minimum is that of P separate regressions.
    """
    return MultilabelProbe(*_fit(features, np.asarray(targets, np.float64),
                                 _binary_cross_entropy, l2, steps))


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to labels."""
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def balanced_accuracy(predictions, labels) -> float:
    """Mean over the classes present in `labels` of the fraction of each predicted right."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)]))


def majority_class(train_labels) -> int:
    """The most frequent train label (ties go to the smallest)."""
    return int(np.argmax(np.bincount(np.asarray(train_labels))))


def average_precision(targets, scores) -> float:
    """Micro-averaged average precision over all (frame, pitch) pairs of [N, P] arrays.

    MusicNet's transcription metric, equal to sklearn's
    average_precision_score(targets.ravel(), scores.ravel()): AP = Σ_n (R_n − R_{n−1})·P_n over
    the distinct score values taken as thresholds in decreasing order, where P_n and R_n are the
    precision and recall of predicting positive every pair scoring ≥ the n-th threshold (R_0 = 0).
    Tied scores form one threshold, so their order does not matter. NaN without positives.
    """
    positive = np.asarray(targets).ravel().astype(bool)
    scores = np.asarray(scores, np.float64).ravel()
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    positive, scores = positive[order], scores[order]
    # The last position of each run of equal scores closes one threshold.
    closes = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
    true_positives = np.cumsum(positive)[closes]
    precision = true_positives / (closes + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))
