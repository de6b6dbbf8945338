"""A mixture of bivariate normals in (log s, log o), fitted by maximum likelihood with optax (Adam).

Lengths are integers, so the fit is made on dequantised lengths (s + u, u uniform in (−0.5, 0.5)): the
continuous density then describes the probability of each integer cell [k − 0.5, k + 0.5], which is how
:mod:`lqs.fit.model` discretises it again.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

SIGMA_FLOOR = 1e-3  # smallest per-axis standard deviation in log space


class LogMix2(eqx.Module):
    """K bivariate normals in log space: logits (K,), mean (K, 2), log-scale (K, 2), correlation parameter (K,)."""

    logits: jax.Array
    mean: jax.Array
    log_scale: jax.Array
    corr_raw: jax.Array

    def unpack(self):
        """(weights (K,), mean (K,2), sd (K,2), rho (K,)) as arrays."""
        w = jax.nn.softmax(self.logits)
        sd = jnp.exp(self.log_scale) + SIGMA_FLOOR
        rho = 0.995 * jnp.tanh(self.corr_raw)
        return w, self.mean, sd, rho

    def log_prob(self, y):
        """log density of points y (n, 2) in log space."""
        w, m, sd, rho = self.unpack()
        z = (y[:, None, :] - m[None]) / sd[None]  # (n, K, 2)
        one_m = 1.0 - rho**2
        q = (z[..., 0] ** 2 - 2 * rho * z[..., 0] * z[..., 1] + z[..., 1] ** 2) / one_m
        logn = -0.5 * q - jnp.log(2 * math.pi * sd[..., 0] * sd[..., 1] * jnp.sqrt(one_m))
        return jax.scipy.special.logsumexp(logn + jnp.log(w), axis=1)

    def to_numpy(self) -> dict:
        w, m, sd, rho = (np.asarray(a, np.float64) for a in self.unpack())
        return {"weights": w.tolist(), "mean": m.tolist(), "sd": sd.tolist(), "rho": rho.tolist()}


def _kmeans_init(y: np.ndarray, k: int, rng: np.random.Generator) -> LogMix2:
    """k-means++ seeding and a few Lloyd steps; each cluster gives one component's start."""
    n = y.shape[0]
    centres = [y[rng.integers(n)]]
    d2 = np.sum((y - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(y[rng.choice(n, p=p)])
        d2 = np.minimum(d2, np.sum((y - centres[-1]) ** 2, axis=1))
    c = np.array(centres)
    for _ in range(15):
        lab = np.argmin(((y[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        for j in range(k):
            if np.any(lab == j):
                c[j] = y[lab == j].mean(0)
    lab = np.argmin(((y[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    w = np.array([max(np.mean(lab == j), 1e-3) for j in range(k)])
    sd = np.empty((k, 2))
    rho = np.zeros(k)
    for j in range(k):
        yj = y[lab == j]
        if yj.shape[0] > 2:
            sd[j] = np.maximum(yj.std(0), 0.05)
            cc = np.corrcoef(yj.T)[0, 1] if np.all(yj.std(0) > 0) else 0.0
            rho[j] = 0.0 if not np.isfinite(cc) else np.clip(cc, -0.9, 0.9)
        else:
            sd[j] = y.std(0)
    return LogMix2(logits=jnp.asarray(np.log(w / w.sum()), jnp.float32), mean=jnp.asarray(c, jnp.float32),
                   log_scale=jnp.asarray(np.log(np.maximum(sd - SIGMA_FLOOR, 1e-4)), jnp.float32),
                   corr_raw=jnp.asarray(np.arctanh(rho / 0.995), jnp.float32))


def fit_logmix(s: np.ndarray, o: np.ndarray, components: int, *, seed: int = 0, steps: int = 1500,
               lr: float = 0.03) -> tuple[LogMix2, float]:
    """Maximum-likelihood mixture on dequantised log lengths; returns (model, mean log-likelihood per request)."""
    rng = np.random.default_rng(seed)
    sd = s.astype(np.float64) + rng.uniform(-0.5, 0.5, s.size)
    od = o.astype(np.float64) + rng.uniform(-0.5, 0.5, o.size)
    y = np.stack([np.log(np.maximum(sd, 0.5)), np.log(np.maximum(od, 0.5))], axis=1)
    model = _kmeans_init(y, components, rng)
    yj = jnp.asarray(y, jnp.float32)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    state = opt.init(eqx.filter(model, eqx.is_array))

    def loss(m):
        return -jnp.mean(m.log_prob(yj))

    @eqx.filter_jit
    def run(m, st):
        def body(carry, _):
            m, st = carry
            val, g = eqx.filter_value_and_grad(loss)(m)
            upd, st = opt.update(g, st, m)
            return (eqx.apply_updates(m, upd), st), val

        (m, st), _ = jax.lax.scan(body, (m, st), None, length=steps)
        return m, loss(m)

    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix its int32 step count with Python floats
        model, final = run(model, state)
    # log-likelihood of the dequantised lengths (not log space): subtract the Jacobian Σ log s + log o
    ll = -float(final) - float(np.mean(y.sum(1)))
    return model, ll
