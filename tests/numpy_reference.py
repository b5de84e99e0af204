"""Exact NumPy references for the SAM-family update rules on a tiny MLP.

The network is `tanh(x W1 + b1) W2 + b2` with a (weighted) mean-squared-error
loss, Keras's `sum_over_batch_size` reduction: `L = Σ_i s_i · mean_k(r_ik²) / N`.
Weights are a list `[W1, b1, W2, b2]`, the order of `model.trainable_variables`.
"""

import numpy as np


def mlp_loss_and_grad(weights, x, y, sample_weight=None, l2=0.0):
    """Loss and gradient; `l2` adds Keras's `L2(l2)` penalty on both kernels."""
    w1, b1, w2, b2 = weights
    n, k = y.shape
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
    h = np.tanh(x @ w1 + b1)
    r = h @ w2 + b2 - y
    loss = np.sum(s * np.mean(r**2, axis=1)) / n
    dout = 2.0 * s[:, None] * r / (n * k)
    dh = dout @ w2.T
    dz = dh * (1.0 - h**2)
    loss += l2 * (np.sum(w1**2) + np.sum(w2**2))
    return loss, [x.T @ dz + 2 * l2 * w1, dz.sum(0), h.T @ dout + 2 * l2 * w2, dout.sum(0)]


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


def sam_sgd_step(weights, x, y, lr, perturbation, sample_weight=None, l2=0.0):
    """One SAM-family step with plain SGD: `w − lr·∇L(w + e(∇L(w), w))`."""
    _, g = mlp_loss_and_grad(weights, x, y, sample_weight, l2)
    e = perturbation(g, weights)
    _, g_sam = mlp_loss_and_grad(
        [w + ei for w, ei in zip(weights, e)], x, y, sample_weight, l2
    )
    return [w - lr * gs for w, gs in zip(weights, g_sam)]


def flatten(vectors):
    return np.concatenate([np.ravel(v) for v in vectors])


def unflatten(flat, like):
    out, i = [], 0
    for v in like:
        out.append(np.reshape(flat[i : i + v.size], v.shape))
        i += v.size
    return out


def mlp_hessian(weights, x, y, step=1e-5):
    """Full Hessian by central differences of the exact gradient (float64)."""
    w = flatten(weights)
    columns = []
    for j in range(w.size):
        dw = np.zeros_like(w)
        dw[j] = step
        _, g_plus = mlp_loss_and_grad(unflatten(w + dw, weights), x, y)
        _, g_minus = mlp_loss_and_grad(unflatten(w - dw, weights), x, y)
        columns.append((flatten(g_plus) - flatten(g_minus)) / (2 * step))
    h = np.stack(columns, axis=1)
    return (h + h.T) / 2


def top_eigenpair(h):
    """Eigenpair of largest |λ| (what power iteration converges to)."""
    eigvals, eigvecs = np.linalg.eigh(h)
    i = np.argmax(np.abs(eigvals))
    return eigvals[i], eigvecs[:, i], eigvals


def eigen_sam_perturbation(grads, weights, v, rho, alpha):
    del weights
    g, v = flatten(grads), flatten(v)
    g_hat = g / (np.linalg.norm(g) + 1e-12)
    v_perp = v - (g_hat @ v) * g_hat
    e = rho * (g_hat + alpha * np.sign(g @ v) * v_perp)
    return unflatten(e, grads)


def x_sam_sgd_step(weights, x, y, lr, rho, v, alpha, correction):
    _, g = mlp_loss_and_grad(weights, x, y)
    e = sam_perturbation(g, weights, rho)
    _, g_a = mlp_loss_and_grad([w + ei for w, ei in zip(weights, e)], x, y)
    g_a = flatten(g_a)
    g_hat = g_a / (np.linalg.norm(g_a) + 1e-12)
    c = g_hat @ v
    if correction == "reference":
        c = np.sign(c) * c
    step = unflatten(g_hat - alpha * c * v, weights)
    return [w - lr * s for w, s in zip(weights, step)]
