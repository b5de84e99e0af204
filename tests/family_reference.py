"""Float64 NumPy oracles for the SAM-family methods (pure NumPy).

Written from the methods' stated update rules only, independently of their
Keras implementations, so that `tests/methods/test_family_oracles.py` can
check the implementations against them. Tolerances used there: rtol=1e-5,
atol=1e-6 (`tests.tiny.RTOL/ATOL`: a float32 Keras run against this float64
reference); two Keras models that must agree by a reduction are compared at
rtol=atol=1e-6 (float32 rounding only).

Conventions
-----------
* Weights and gradients are lists of arrays in `model.trainable_variables`
  order. `‖·‖` is the global L2 norm over the list; `unit(g) = g/(‖g‖+1e-12)`.
* A *problem* is a loss on one fixed batch: `problem.grad(w, examples=None)`
  is the gradient of the mean loss (Keras `sum_over_batch_size`) over all
  examples or over the indices `examples`; `problem.example_losses(w)` is the
  per-example loss (mean over outputs of the squared residual).
* An *optimizer* applies a descent direction `d` with a learning rate:
  `SGD` (Keras: `m ← μm − lr·d; w ← w + m`) and `Adam` (Keras 3's update).
* A *method* is an object with `step(w, t, lr, problem, opt) -> w`, where `t`
  is `optimizer.iterations` before the step. `run(...)` drives it, one batch
  per step; `run_accumulated(...)` drives it under gradient accumulation.
* `mask` (SAM-ON, `perturbed_variables`): one bool per variable or `None`
  (all). The perturbation rule sees the gradient restricted to the selected
  variables (zeros elsewhere, norms over them only) and the perturbation is
  zero outside them; everything else in the rule uses the full gradient.
* `interval=k`: on steps with `t % k != 0` the second pass is skipped and
  the perturbed gradient `g_s` is replaced by `g` (the perturbation rule is
  not evaluated on those steps).
"""

import math

import numpy as np

from tests import numpy_reference as ref

EPS = 1e-12

# ------------------------------------------------------------ list algebra


def add(a, b, scale=1.0):
    """`a + scale·b`."""
    return [x + scale * y for x, y in zip(a, b)]


def scale(a, s):
    return [s * x for x in a]


def dot(a, b):
    return float(sum(np.sum(x * y) for x, y in zip(a, b)))


def norm(a):
    return float(ref.norm(a))


def unit(a):
    return scale(a, 1.0 / (norm(a) + EPS))


def zeros_like(a):
    return [np.zeros_like(x) for x in a]


def restrict(a, mask):
    """`a` on the selected variables, zeros elsewhere (`mask=None`: all)."""
    if mask is None:
        return list(a)
    return [x if keep else np.zeros_like(x) for x, keep in zip(a, mask)]


# ------------------------------------------------------------ learning rates


def constant(lr):
    return lambda step: lr


def polynomial_decay(initial, decay_steps, end, power=1.0):
    """`keras.optimizers.schedules.PolynomialDecay` (cycle=False)."""

    def lr(step):
        frac = 1.0 - min(step, decay_steps) / decay_steps
        return (initial - end) * frac**power + end

    return lr


def piecewise_constant(boundaries, values):
    """`PiecewiseConstantDecay`: `values[i]` while `step <= boundaries[i]`."""

    def lr(step):
        for boundary, value in zip(boundaries, values):
            if step <= boundary:
                return value
        return values[-1]

    return lr


# ------------------------------------------------------------ optimizers


class SGD:
    """Keras SGD: `w ← w − lr·d`, or with momentum μ (nesterov=False)
    `m ← μ·m − lr·d; w ← w + m`, `m` starting at 0."""

    def __init__(self, momentum=0.0):
        self.momentum = momentum
        self.velocity = None

    def apply(self, w, d, lr):
        if self.momentum == 0.0:
            return add(w, d, -lr)
        if self.velocity is None:
            self.velocity = zeros_like(w)
        self.velocity = [self.momentum * m - lr * di for m, di in zip(self.velocity, d)]
        return add(w, self.velocity)

    def uphill_momentum(self, like):
        """The accumulated momentum pointing uphill: `−velocity`."""
        if self.momentum == 0.0:
            raise ValueError("SGD without momentum has no momentum")
        return zeros_like(like) if self.velocity is None else scale(self.velocity, -1.0)


class Adam:
    """Keras 3 Adam (amsgrad=False):

    ```
    t = iterations + 1;  α = lr·√(1−β2^t)/(1−β1^t)
    m ← m + (1−β1)(d − m);  v ← v + (1−β2)(d² − v)
    w ← w − α·m/(√v + ε)
    ```
    """

    def __init__(self, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.m = self.v = None

    def apply(self, w, d, lr):
        if self.m is None:
            self.m, self.v = zeros_like(w), zeros_like(w)
        self.t += 1
        alpha = lr * math.sqrt(1 - self.beta_2**self.t) / (1 - self.beta_1**self.t)
        self.m = [m + (1 - self.beta_1) * (di - m) for m, di in zip(self.m, d)]
        self.v = [v + (1 - self.beta_2) * (di**2 - v) for v, di in zip(self.v, d)]
        return [
            wi - alpha * m / (np.sqrt(v) + self.epsilon)
            for wi, m, v in zip(w, self.m, self.v)
        ]

    def uphill_momentum(self, like):
        """The first moment (uphill: it accumulates gradients)."""
        return zeros_like(like) if self.m is None else list(self.m)


class Clipped:
    """Keras's gradient clipping of the descent direction `d`, then `opt`.

    ```
    clipnorm c:         d_i ← d_i · c / max(‖d_i‖, c)      (per variable)
    global_clipnorm c:  d   ← d · c / max(‖d‖, c)          (all variables)
    clipvalue c:        d   ← clip(d, −c, c)               (per entry)
    ```
    """

    def __init__(self, opt, clipnorm=None, global_clipnorm=None, clipvalue=None):
        self.opt = opt
        self.clipnorm, self.global_clipnorm, self.clipvalue = clipnorm, global_clipnorm, clipvalue

    def clip(self, d):
        if self.clipnorm:
            c = self.clipnorm
            return [di * c / max(float(np.linalg.norm(di)), c) for di in d]
        if self.global_clipnorm:
            c = self.global_clipnorm
            return scale(d, c / max(norm(d), c))
        if self.clipvalue:
            return [np.clip(di, -self.clipvalue, self.clipvalue) for di in d]
        return d

    def apply(self, w, d, lr):
        return self.opt.apply(w, self.clip(d), lr)

    def uphill_momentum(self, like):
        return self.opt.uphill_momentum(like)


class ClippedAscent:
    """`problem` whose gradient comes back clipped: a run on it clips the
    gradient of every pass, ascent included (the wrong semantics)."""

    def __init__(self, problem, clipper):
        self.problem, self.clipper = problem, clipper

    def grad(self, w, **kwargs):
        return self.clipper.clip(self.problem.grad(w, **kwargs))

    def __getattr__(self, name):
        return getattr(self.problem, name)


# ------------------------------------------------------------ driver


def run(method, problem, w0, steps, opt=None, lr=0.1):
    """`steps` steps of `method` from `w0`; `lr` is a number or `lr(step)`."""
    opt = SGD() if opt is None else opt
    lr_at = lr if callable(lr) else constant(lr)
    w = [np.array(x, dtype=np.float64) for x in w0]
    for t in range(steps):
        w = method.step(w, t, lr_at(t), problem, opt)
    return w


def run_accumulated(method, problems, w0, accumulation, opt=None, lr=0.1):
    """`gradient_accumulation_steps=accumulation` over the micro-batch
    `problems`, in order (the finite ones: a skipped micro-batch is left out
    by the caller). Per-micro-batch m-sharpness: each micro-batch of a window
    takes `method`'s step on its own at the window's weights (so `t`, the
    optimizer step, and the optimizer's momentum are the same for all of
    them), its descent direction is kept instead of applied, and the mean of
    the window's directions is applied once; an incomplete last window is not
    applied. `lr` is a number or `lr(t)`."""
    opt = SGD() if opt is None else opt
    lr_at = lr if callable(lr) else constant(lr)
    w = [np.array(x, dtype=np.float64) for x in w0]
    for t in range(len(problems) // accumulation):
        window = _Collect(opt)
        for problem in problems[t * accumulation : (t + 1) * accumulation]:
            unchanged = method.step(w, t, lr_at(t), problem, window)
            assert unchanged is w, "the method moved the weights outside the optimizer"
        mean = scale([sum(parts) for parts in zip(*window.directions)], 1.0 / accumulation)
        w = opt.apply(w, mean, lr_at(t))
    return w


class _Collect:
    """Stands in for `opt` inside a window: keeps each micro-batch's descent
    direction and leaves the weights (and `opt`'s state) alone."""

    def __init__(self, opt):
        self.opt = opt
        self.directions = []

    def apply(self, w, d, lr):
        self.directions.append(d)
        return w

    def uphill_momentum(self, like):
        return self.opt.uphill_momentum(like)


# ------------------------------------------------------------ methods


class Plain:
    """The base optimizer on `g` (no perturbation)."""

    def step(self, w, t, lr, problem, opt):
        return opt.apply(w, problem.grad(w), lr)


class SAM:
    """`e = ρ·ĝ`; descent `g_s = ∇L(w + e)`.

    Subclasses change `perturbation` (on the restricted gradient) and/or
    `descent(w, g, t, lr, problem)`.
    """

    def __init__(self, rho, interval=1, mask=None):
        self.rho, self.interval, self.mask = rho, interval, mask

    def perturbation(self, g_sel, t, lr):
        return scale(g_sel, self.rho / (norm(g_sel) + EPS))

    def perturbed_grad(self, w, g, t, lr, problem):
        """`g_s`: the second pass at `w + e`, or `g` on an interval off-step."""
        if t % self.interval != 0:
            return g
        e = restrict(self.perturbation(restrict(g, self.mask), t, lr), self.mask)
        return problem.grad(add(w, e))

    def descent(self, w, g, t, lr, problem):
        return self.perturbed_grad(w, g, t, lr, problem)

    def step(self, w, t, lr, problem, opt):
        g = problem.grad(w)
        return opt.apply(w, self.descent(w, g, t, lr, problem), lr)


class ASAM(SAM):
    """ASAM (Kwon et al., 2021): `T = |w| + η`, `e = ρ·T²g/‖Tg‖` (no mask,
    no interval); descent `g_s = ∇L(w + e)`."""

    def __init__(self, rho, eta):
        super().__init__(rho)
        self.eta = eta

    def perturbed_grad(self, w, g, t, lr, problem):
        return problem.grad(add(w, ref.asam_perturbation(g, w, self.rho, self.eta)))


class EigenSAM(SAM):
    """Eigen-SAM (Luo et al., 2024) with given unit eigenvectors:
    `e = ρ·(ĝ + α·sign(<g, v>)·(v − <ĝ, v>ĝ))`, `v = vectors[t]` (a list of
    arrays, or a callable `t -> list`)."""

    def __init__(self, rho, alpha, vectors, **kwargs):
        super().__init__(rho, **kwargs)
        self.alpha, self.vectors = alpha, vectors

    def perturbation(self, g_sel, t, lr):
        v = self.vectors(t) if callable(self.vectors) else self.vectors[t]
        return ref.eigen_sam_perturbation(g_sel, None, v, self.rho, self.alpha)


class GSAM(SAM):
    """GSAM (Zhuang et al., 2022).

    ```
    ρ_t = ρ_min + (ρ_max − ρ_min)(lr − lr_min)/(lr_max − lr_min), clipped
          (lr_max=None: largest lr seen so far, this step's included;
           lr_min=None: 0; lr_max == lr_min: ρ_t = ρ_max)
    e = ρ_t·ĝ;  ĝ_s = unit(g_s);  g⊥ = g − (g·ĝ_s)ĝ_s;  d = g_s − α·g⊥
    ```
    """

    def __init__(self, rho_max, rho_min, alpha, lr_max=None, lr_min=None, **kwargs):
        super().__init__(rho_max, **kwargs)
        self.rho_max, self.rho_min, self.alpha = rho_max, rho_min, alpha
        self.lr_max, self.lr_min = lr_max, lr_min
        self.lr_seen = -math.inf
        self.rhos = []  # ρ_t of each step, for the tests

    def rho_t(self, lr):
        self.lr_seen = max(self.lr_seen, lr)
        lr_max = self.lr_seen if self.lr_max is None else self.lr_max
        lr_min = 0.0 if self.lr_min is None else self.lr_min
        if lr_max == lr_min:
            return self.rho_max
        rho = self.rho_min + (self.rho_max - self.rho_min) * (lr - lr_min) / (lr_max - lr_min)
        low, high = sorted((self.rho_min, self.rho_max))
        return min(max(rho, low), high)

    def perturbation(self, g_sel, t, lr):
        return scale(g_sel, self.rhos[-1] / (norm(g_sel) + EPS))

    def descent(self, w, g, t, lr, problem):
        self.rhos.append(self.rho_t(lr))
        g_s = self.perturbed_grad(w, g, t, lr, problem)
        g_s_hat = unit(g_s)
        g_perp = add(g, g_s_hat, -dot(g, g_s_hat))
        return add(g_s, g_perp, -self.alpha)


class WSAM(SAM):
    """WSAM (Yue et al., 2023), `a = γ/(1−γ)`, `e = ρ·ĝ`.

    Coupled: the optimizer steps on `a·g_s + (1−a)·g`. Decoupled: the
    optimizer steps on `g`, then `w ← w − lr·a·(g_s − g)`.
    """

    def __init__(self, rho, gamma, decouple=True, **kwargs):
        super().__init__(rho, **kwargs)
        self.a = gamma / (1.0 - gamma)
        self.decouple = decouple

    def step(self, w, t, lr, problem, opt):
        g = problem.grad(w)
        g_s = self.perturbed_grad(w, g, t, lr, problem)
        if not self.decouple:
            return opt.apply(w, add(scale(g_s, self.a), g, 1.0 - self.a), lr)
        w = opt.apply(w, g, lr)
        return add(w, add(g_s, g, -1.0), -lr * self.a)


class FriendlySAM(SAM):
    """FriendlySAM (Li et al., 2024). State `m`.

    First step: `m = g`, `e = ρ·ĝ`. Later: `d = g − σ·m`,
    `m ← λ·m + (1−λ)·g`, `e = ρ·unit(d)`. Descent `g_s`.

    With a mask the state tracks the restricted gradient; the perturbation
    is the same as with a state of the full gradient (the rule is linear
    and elementwise in `m`).
    """

    def __init__(self, rho, sigma, lmbda, **kwargs):
        super().__init__(rho, **kwargs)
        self.sigma, self.lmbda = sigma, lmbda
        self.m = None

    def perturbation(self, g_sel, t, lr):
        if self.m is None:
            self.m = list(g_sel)
            return scale(g_sel, self.rho / (norm(g_sel) + EPS))
        d = add(g_sel, self.m, -self.sigma)
        self.m = add(scale(self.m, self.lmbda), g_sel, 1.0 - self.lmbda)
        return scale(d, self.rho / (norm(d) + EPS))


class LookSAM:
    """LookSAM (Liu et al., 2022).

    Steps `t % k == 0`: SAM (`e = ρ·ĝ`, descent `g_s`) and store
    `g_v = g_s − ‖g_s‖·cos(g, g_s)·ĝ`. Other steps, one pass:
    `d = g + α·(‖g‖/(‖g_v‖+1e-12))·g_v`. Several calls at the same `t` (the
    micro-batches of one optimizer step, `run_accumulated`) store the mean
    of their `g_v`.
    """

    def __init__(self, rho, k, alpha, mask=None):
        self.rho, self.k, self.alpha, self.mask = rho, k, alpha, mask
        self.g_v = None
        self._g_vs = (None, [])  # (t, the g_v computed at t)
        self.passes = 0  # forward-backward passes taken, for the tests

    def step(self, w, t, lr, problem, opt):
        g = problem.grad(w)
        self.passes += 1
        if t % self.k == 0:
            g_sel = restrict(g, self.mask)
            e = restrict(scale(g_sel, self.rho / (norm(g_sel) + EPS)), self.mask)
            g_s = problem.grad(add(w, e))
            self.passes += 1
            cos = dot(g, g_s) / ((norm(g) + EPS) * (norm(g_s) + EPS))
            g_v = add(g_s, unit(g), -norm(g_s) * cos)
            if self._g_vs[0] != t:
                self._g_vs = (t, [])
            self._g_vs[1].append(g_v)
            self.g_v = scale([sum(parts) for parts in zip(*self._g_vs[1])],
                             1.0 / len(self._g_vs[1]))
            d = g_s
        else:
            d = add(g, self.g_v, self.alpha * norm(g) / (norm(self.g_v) + EPS))
        return opt.apply(w, d, lr)


class ESAM(SAM):
    """ESAM with `beta=1` (Du et al., 2022): `e = ρ·ĝ`; the `k =
    max(1, ⌊γN⌋)` examples of largest `ℓ_i(w+e) − ℓ_i(w)` are selected and
    the descent is the gradient at `w + e` of their mean loss.

    `min_gap`: the oracle refuses data whose k-th and (k+1)-th largest loss
    increases are closer than this (a float32 run could select otherwise).
    """

    def __init__(self, rho, gamma, min_gap=1e-5, **kwargs):
        super().__init__(rho, **kwargs)
        self.gamma, self.min_gap = gamma, min_gap
        self.selections = []

    def perturbed_grad(self, w, g, t, lr, problem):
        if t % self.interval != 0:
            return g
        e = restrict(self.perturbation(restrict(g, self.mask), t, lr), self.mask)
        w_e = add(w, e)
        increase = problem.example_losses(w_e) - problem.example_losses(w)
        n = increase.size
        k = max(1, int(math.floor(self.gamma * n)))
        order = np.argsort(-increase, kind="stable")
        if k < n:
            gap = increase[order[k - 1]] - increase[order[k]]
            if gap < self.min_gap:
                raise ValueError(f"near tie in the selection (gap {gap:.3g})")
        selected = np.sort(order[:k])
        self.selections.append(selected)
        return problem.grad(w_e, examples=selected)


class MomentumSAM:
    """Momentum-SAM (Becker et al., 2024), one pass per step:
    `e = ρ·b/(‖b‖+1e-12)` with `b` the optimizer's uphill momentum read
    before the update (`−velocity` for Keras SGD, the first moment for Adam);
    the descent is `∇L(w + e)`."""

    def __init__(self, rho, mask=None):
        self.rho, self.mask = rho, mask

    def step(self, w, t, lr, problem, opt):
        b = restrict(opt.uphill_momentum(w), self.mask)
        e = restrict(scale(b, self.rho / (norm(b) + EPS)), self.mask)
        return opt.apply(w, problem.grad(add(w, e)), lr)


def momentum_sam_sgd_torch(problem, w0, steps, lr, momentum, rho):
    """Momentum-SAM with SGD written in PyTorch's convention (constant lr):
    `buf ← μ·buf + g_s;  w ← w − lr·buf`, perturbation `+ρ·buf/‖buf‖`
    with `buf` before the update (zero at the first step)."""
    w = [np.array(x, dtype=np.float64) for x in w0]
    buf = zeros_like(w)
    for _ in range(steps):
        e = scale(buf, rho / (norm(buf) + EPS))
        g_s = problem.grad(add(w, e))
        buf = add(scale(buf, momentum), g_s)
        w = add(w, buf, -lr)
    return w


# ------------------------------------------------------------ problems


class MLPProblem:
    """`tanh(x W1 + b1) W2 + b2`, MSE (weights `[W1, b1, W2, b2]`)."""

    def __init__(self, x, y):
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)

    def grad(self, w, examples=None):
        x, y = (self.x, self.y) if examples is None else (self.x[examples], self.y[examples])
        return ref.mlp_loss_and_grad(w, x, y)[1]

    def example_losses(self, w):
        w1, b1, w2, b2 = w
        r = np.tanh(self.x @ w1 + b1) @ w2 + b2 - self.y
        return np.mean(r**2, axis=1)


class LayerNormProblem:
    """`Dense → LayerNormalization → tanh → Dense`, MSE.

    Weights `[W1, b1, γ, β, W2, b2]`; LayerNormalization over the last axis
    with the population variance: `(z − μ)/√(σ² + ε)·γ + β`.
    """

    def __init__(self, x, y, epsilon=1e-3):
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.epsilon = epsilon

    def _forward(self, w, x):
        w1, b1, gamma, beta, w2, b2 = w
        z = x @ w1 + b1
        mu = z.mean(axis=1, keepdims=True)
        std = np.sqrt(((z - mu) ** 2).mean(axis=1, keepdims=True) + self.epsilon)
        z_hat = (z - mu) / std
        h = np.tanh(gamma * z_hat + beta)
        return z_hat, std, h, h @ w2 + b2

    def example_losses(self, w):
        return np.mean((self._forward(w, self.x)[3] - self.y) ** 2, axis=1)

    def loss(self, w, examples=None):
        losses = self.example_losses(w)
        return float(np.mean(losses if examples is None else losses[examples]))

    def grad(self, w, examples=None):
        x, y = (self.x, self.y) if examples is None else (self.x[examples], self.y[examples])
        w1, b1, gamma, beta, w2, b2 = w
        z_hat, std, h, out = self._forward(w, x)
        n, k = y.shape
        d_out = 2.0 * (out - y) / (n * k)
        d_a = (d_out @ w2.T) * (1.0 - h**2)
        d_z_hat = d_a * gamma
        d_z = (
            d_z_hat
            - d_z_hat.mean(axis=1, keepdims=True)
            - z_hat * (d_z_hat * z_hat).mean(axis=1, keepdims=True)
        ) / std
        return [
            x.T @ d_z,
            d_z.sum(0),
            (d_a * z_hat).sum(0),
            d_a.sum(0),
            h.T @ d_out,
            d_out.sum(0),
        ]


def finite_difference_grad(loss, w, step=1e-6):
    """Central differences of a float64 scalar `loss(w)` (to check `grad`)."""
    flat = ref.flatten(w)
    out = np.empty_like(flat)
    for j in range(flat.size):
        dw = np.zeros_like(flat)
        dw[j] = step
        out[j] = (loss(ref.unflatten(flat + dw, w)) - loss(ref.unflatten(flat - dw, w))) / (
            2 * step
        )
    return ref.unflatten(out, w)
