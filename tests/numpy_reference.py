"""Exact NumPy references for the SAM-family update rules on a tiny MLP.

The network is `tanh(x W1 + b1) W2 + b2` with a (weighted) mean-squared-error
loss, Keras's `sum_over_batch_size` reduction: `L = Σ_i s_i · mean_k(r_ik²) / N`.
Weights are a list `[W1, b1, W2, b2]`, the order of `model.trainable_variables`.
"""

import numpy as np


def mlp_loss_and_grad(weights, x, y, sample_weight=None):
    w1, b1, w2, b2 = weights
    n, k = y.shape
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
    h = np.tanh(x @ w1 + b1)
    r = h @ w2 + b2 - y
    loss = np.sum(s * np.mean(r**2, axis=1)) / n
    dout = 2.0 * s[:, None] * r / (n * k)
    dh = dout @ w2.T
    dz = dh * (1.0 - h**2)
    return loss, [x.T @ dz, dz.sum(0), h.T @ dout, dout.sum(0)]


def norm(vectors):
    return np.sqrt(sum(np.sum(v**2) for v in vectors))


def sam_perturbation(grads, weights, rho):
    del weights
    scale = rho / (norm(grads) + 1e-12)
    return [scale * g for g in grads]


def asam_perturbation(grads, weights, rho, eta):
    t = [np.abs(w) + eta for w in weights]
    tg = [ti * g for ti, g in zip(t, grads)]
    scale = rho / (norm(tg) + 1e-12)
    return [scale * ti * tgi for ti, tgi in zip(t, tg)]


def sam_sgd_step(weights, x, y, lr, perturbation, sample_weight=None):
    """One SAM-family step with plain SGD: `w − lr·∇L(w + e(∇L(w), w))`."""
    _, g = mlp_loss_and_grad(weights, x, y, sample_weight)
    e = perturbation(g, weights)
    _, g_sam = mlp_loss_and_grad(
        [w + ei for w, ei in zip(weights, e)], x, y, sample_weight
    )
    return [w - lr * gs for w, gs in zip(weights, g_sam)]
