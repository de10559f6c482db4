"""Curvature of the loss: Hessian-vector products, Lanczos, spectral density, trace, layer blocks.

Everything here is matrix-free: the Hessian ``H = d^2 C / dtheta^2`` of the batch loss
``C(theta) = mean_x C_x(apply(theta, x), y_x)`` is only ever applied to vectors, by
forward-over-reverse differentiation (``jax.jvp`` of ``jax.grad``; Pearlmutter 1994), at about
the cost of two gradients. On top of that product:

* :func:`lanczos` -- k steps of Lanczos with full reorthogonalisation: the tridiagonal
  ``T = Q^T H Q`` (alphas, betas), its eigenvalues (Ritz values) and the first components of its
  eigenvectors. Extreme Ritz values converge to the extreme eigenvalues first.
* :func:`stochastic_lanczos_quadrature` -- the spectral density ``(1/n) sum_j delta(t - l_j)``
  as Gauss quadratures: for a unit start vector v, ``v^T f(H) v = sum_i w_i f(theta_i)`` exactly
  for polynomials f of degree < 2k (nodes theta_i = Ritz values, weights w_i = squared first
  components), averaged over random v.
* :func:`hutchinson` -- ``tr H = E[v^T H v]`` for Rademacher v, with its standard error.
* :func:`layer_hessian_extremes` -- Lanczos on each layer's diagonal block ``H_ll``.

Each model-level function has the probe signature ``fn(model, params, x, y, loss, *, ...,
key=None)``, so ``gradflow.sweep(hessian_extremes, model, n_seeds, x, y, iterations=20)`` runs it
for many seeds at once (``key`` may be an int seed there: sweep's options must be hashable).
Products are computed in the parameters' dtype promoted to at least the default float (float32,
or float64 under ``JAX_ENABLE_X64``).

References: Pearlmutter 1994 (fast exact Hessian-vector products); Golub & Van Loan, *Matrix
Computations*, 4th ed., Sec. 10.1 (Lanczos) and Golub & Meurant 2010 (quadrature); Ubaru, Chen &
Saad 2017 (SIAM J. Matrix Anal. Appl. 38, stochastic Lanczos quadrature); Ghorbani, Krishnan &
Xiao 2019 (arXiv:1901.10159, Hessian spectral densities of deep nets); Hutchinson 1989.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradflow.losses import get_loss
from gradflow.models import Model, leaf_groups
from gradflow.probes import _use_order, validate

BREAKDOWN = 10
"""Lanczos stops a Krylov sequence when ``beta <= BREAKDOWN * eps * max_i ||H q_i||``: such a
beta is at the rounding level of one product, indistinguishable from an invariant subspace."""


# --------------------------------------------------------------------------------------------
# Hessian-vector products


def batch_loss(model: Model, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """``params -> C(params) = mean_x C_x(model.apply(params, x), y_x)``, a scalar."""
    loss_fn = get_loss(loss)
    return lambda params: jnp.mean(loss_fn(model.apply(params, x), y))


def working_dtype(params):
    """The dtype the Krylov methods use: the params' dtype, promoted to at least the default
    float (float32; float64 when x64 is enabled)."""
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    return jnp.promote_types(dtype, jax.dtypes.canonicalize_dtype(jnp.float64))


def _upcast(params, dtype):
    return jax.tree.map(lambda a: a.astype(jnp.promote_types(a.dtype, dtype)), params)


def hvp(loss_fn, params, tangent):
    """``H t`` as a pytree shaped like ``params``: ``jax.jvp`` of ``jax.grad`` (Pearlmutter 1994).

    Args:
      loss_fn: scalar function of a parameter pytree. params: where H is taken.
      tangent: a pytree shaped like ``params``.
    Returns: ``H t = d/de grad C(params + e t)`` at e = 0, shaped like ``params``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (tangent,))[1]


def hessian_vector_product(loss_fn, params, dtype=None):
    """``v -> H v`` on flat vectors (``ravel_pytree`` order) for the Hessian of ``loss_fn``.

    Args:
      loss_fn: scalar function of a parameter pytree. params: where the Hessian is taken.
      dtype: the computation's dtype (default :func:`working_dtype`); params are cast up to it.
    Returns: a function of a vector of shape (n_params,) (cast to ``dtype``) returning one.
    """
    dtype = working_dtype(params) if dtype is None else dtype
    flat, unravel = ravel_pytree(_upcast(params, dtype))
    grad = jax.grad(lambda f: loss_fn(unravel(f)))
    return lambda v: jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]


# --------------------------------------------------------------------------------------------
# Lanczos, quadrature, trace on any symmetric operator


class Lanczos(NamedTuple):
    """k steps of Lanczos on a symmetric A from a unit start vector q_1.

    Attributes:
      alphas: (k,) diagonal of ``T = Q^T A Q``. betas: (k - 1,) its off-diagonal; an exact 0
        marks a breakdown (the Krylov space was invariant), where a fresh direction orthogonal
        to all before it continued the basis: T splits into blocks, and the later blocks' Ritz
        values are eigenvalues of A too, with quadrature weight 0.
      ritz_values: (k,) eigenvalues theta_i of T, ascending.
      first_components: (k,) ``e_1^T u_i`` for T's unit eigenvectors u_i (any sign).
    """

    alphas: jax.Array
    betas: jax.Array
    ritz_values: jax.Array
    first_components: jax.Array

    @property
    def weights(self) -> jax.Array:
        """(k,) Gauss quadrature weights ``(e_1^T u_i)^2``, summing to 1."""
        return jnp.square(self.first_components)


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (an int), got {value!r}")
    return int(value)


def lanczos(matvec, v0: jax.Array, iterations: int) -> Lanczos:
    """Lanczos tridiagonalisation with full reorthogonalisation (classical Gram-Schmidt, twice).

    With q_1 = v0 / ||v0||, it builds an orthonormal Q = [q_1 .. q_k] and ``T = Q^T A Q``
    tridiagonal; then ``q_1^T p(A) q_1 = e_1^T p(T) e_1 = sum_i w_i p(theta_i)`` for every
    polynomial p of degree < 2k (Gauss quadrature of the measure ``sum_j (u_j^T q_1)^2
    delta(t - lambda_j)``), and with k = n the Ritz values are all the eigenvalues.

    Args:
      matvec: ``v -> A v`` on vectors of shape (n,), A symmetric.
      v0: the start vector, shape (n,), nonzero; its dtype is the computation's.
      iterations: k, clipped to n.
    Returns: :class:`Lanczos` with k = min(iterations, n). Memory: the basis, k x n.

    References: Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1; Paige 1971.
    """
    n = v0.shape[0]
    k = min(_check_count("iterations", iterations), n)
    dtype = v0.dtype
    tol = BREAKDOWN * jnp.finfo(dtype).eps

    def step(carry, i):
        basis, coverage, a_norm = carry
        q = basis[i]
        w = matvec(q).astype(dtype)
        alpha = jnp.vdot(q, w)
        a_norm = jnp.maximum(a_norm, jnp.linalg.norm(w))
        # Orthogonalise the candidate and a fresh direction together: one read of the basis
        # serves both, and the fresh one replaces the candidate at a breakdown. Twice is enough
        # (Kahan-Parlett); the projection also removes alpha q_i and beta q_{i-1}. The fresh one
        # is the unit vector e_j least covered by the basis: coverage_j = sum_i Q_ij^2 sums to
        # the i + 1 vectors so far, so its minimum is <= (i + 1)/n < 1 whenever a next vector is
        # needed, and e_j keeps a nonzero remainder (deterministic, no random draws in the loop).
        fresh = jax.nn.one_hot(jnp.argmin(coverage), n, dtype=dtype)
        pair = jnp.stack([w, fresh])
        pair = pair - (pair @ basis.T) @ basis
        pair = pair - (pair @ basis.T) @ basis
        beta = jnp.linalg.norm(pair[0])
        broken = beta <= tol * a_norm  # also A q = 0 exactly (a_norm = 0)
        fresh = pair[1] / jnp.maximum(jnp.linalg.norm(pair[1]), jnp.finfo(dtype).tiny)
        nxt = jnp.where(broken, fresh, pair[0] / jnp.where(broken, 1, beta))
        basis = basis.at[i + 1].set(nxt, mode="drop")  # the k-th next vector is not needed
        carry = (basis, coverage + jnp.square(nxt), a_norm)
        return carry, (alpha, jnp.where(broken, 0, beta))

    q1 = v0 / jnp.linalg.norm(v0)
    init = (jnp.zeros((k, n), dtype).at[0].set(q1), jnp.square(q1), jnp.zeros((), dtype))
    _, (alphas, betas) = jax.lax.scan(step, init, jnp.arange(k))
    betas = betas[:-1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    ritz, vectors = jnp.linalg.eigh(tridiagonal)
    return Lanczos(alphas, betas, ritz, vectors[0])


def lanczos_extremes(
    matvec, n: int, key: jax.Array, iterations: int = 40, dtype=jnp.float32
) -> jax.Array:
    """The k Ritz values, ascending, from a random start vector: ``[0]`` and ``[-1]`` estimate
    lambda_min and lambda_max (Kaniel-Paige: the extremes converge first; k = n gives all).

    Args:
      matvec: ``v -> A v`` on vectors of shape (n,), A symmetric. n: the dimension.
      key: for the (Gaussian) start vector.
      iterations: Krylov dimension k (clipped to n). dtype: of the vectors.
    Returns: shape (min(iterations, n),).
    """
    _check_count("iterations", iterations)
    v0 = jax.random.normal(key, (n,), dtype)
    return lanczos(matvec, v0, iterations).ritz_values


class SpectralDensity(NamedTuple):
    """Stochastic Lanczos quadrature of a spectral density; shapes (n_probes, k).

    The density ``phi(t) = (1/n) sum_j delta(t - lambda_j)`` is estimated per probe v by
    ``sum_i weights[v, i] delta(t - nodes[v, i])``; each row of weights sums to 1. See
    :func:`density_on_grid` for the smoothed curve.
    """

    nodes: jax.Array
    weights: jax.Array


def stochastic_lanczos_quadrature(
    matvec, n: int, key: jax.Array, n_probes: int = 8, iterations: int = 30, dtype=jnp.float32
) -> SpectralDensity:
    """Gauss quadratures of A's spectral measure from random unit start vectors.

    For v uniform on the unit sphere, ``E[v^T f(A) v] = (1/n) tr f(A) = int f dphi``; Lanczos
    from v gives ``v^T f(A) v`` exactly for polynomials f of degree < 2k.

    Args:
      matvec: ``v -> A v`` on shape (n,), A symmetric. n: dimension. key: for the probes.
      n_probes: m start vectors: probe i starts from ``jax.random.normal(jax.random.split(key,
        m)[i], (n,), dtype)``, normalised (uniform on the sphere). iterations: k (clipped to n).
    Returns: :class:`SpectralDensity` with fields of shape (m, min(k, n)).

    References: Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019 (arXiv:1901.10159).
    """
    _check_count("n_probes", n_probes)
    _check_count("iterations", iterations)

    def one(probe_key):
        run = lanczos(matvec, jax.random.normal(probe_key, (n,), dtype), iterations)
        return run.ritz_values, run.weights

    # lax.map, not vmap: probes one after another, so memory holds one Krylov basis.
    nodes, weights = jax.lax.map(one, jax.random.split(key, n_probes))
    return SpectralDensity(nodes, weights)


def density_on_grid(nodes, weights, grid, sigma: float) -> np.ndarray:
    """The Gaussian-smoothed density ``(1/m) sum_v sum_i w_vi N(t; theta_vi, sigma^2)``.

    Args:
      nodes, weights: (..., m, k), e.g. :class:`SpectralDensity` fields (leading axes, such as
        a seed axis from ``gradflow.sweep``, are kept). grid: points t, shape (G,).
      sigma: the kernel's standard deviation (> 0), in eigenvalue units.
    Returns: float64 numpy array (..., G), integrating to about 1 over a wide enough grid.
    """
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    grid = np.asarray(grid, np.float64)
    if nodes.shape != weights.shape or nodes.ndim < 2:
        raise ValueError(
            f"nodes and weights must have the same shape (..., n_probes, k), got {nodes.shape} "
            f"and {weights.shape}"
        )
    if grid.ndim != 1:
        raise ValueError(f"grid must be 1-d points, got shape {grid.shape}")
    if not (np.isscalar(sigma) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    kernel = np.exp(-0.5 * np.square((grid - nodes[..., None]) / sigma))
    kernel /= sigma * np.sqrt(2 * np.pi)
    return np.einsum("...pk,...pkg->...g", weights, kernel) / nodes.shape[-2]


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate ``trace = mean_i v_i^T A v_i`` and ``stderr = std_i / sqrt(m)``
    (sample std, ddof 1); scalars."""

    trace: jax.Array
    stderr: jax.Array


def hutchinson(
    matvec, n: int, key: jax.Array, n_probes: int = 32, dtype=jnp.float32
) -> TraceEstimate:
    """``tr A = E[v^T A v]`` over Rademacher v (entries +-1), from m probes.

    Var(v^T A v) = 2 sum_{i != j} A_ij^2 for Rademacher v (the least of any iid probe): a
    diagonal A is estimated exactly by every probe.

    Args:
      matvec: ``v -> A v`` on shape (n,). n: dimension. key: for the probes.
      n_probes: m >= 2 (the standard error needs two).
    Returns: :class:`TraceEstimate`.

    References: Hutchinson 1989; Avron & Toledo 2011 (J. ACM 58).
    """
    m = _check_count("n_probes", n_probes, 2)

    def sample(probe_key):
        v = jax.random.rademacher(probe_key, (n,), dtype)
        return jnp.vdot(v, matvec(v).astype(dtype))

    samples = jax.lax.map(sample, jax.random.split(key, m))
    return TraceEstimate(jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(m))


# --------------------------------------------------------------------------------------------
# Probes: fn(model, params, x, y, loss, *, ..., key=None)


class HessianExtremes(NamedTuple):
    """Extreme eigenvalues of the loss Hessian (Lanczos estimates): scalars for the whole
    Hessian, (L,) for its per-layer diagonal blocks. ``lambda_min < 0`` means a saddle
    direction."""

    lambda_min: jax.Array
    lambda_max: jax.Array


def _check(model, params, x, y, loss, **counts) -> None:
    validate(model, x, y, loss, params)
    for name, (value, minimum) in counts.items():
        _check_count(name, value, minimum)
    if not sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)):
        raise ValueError("params hold no entries: a model without parameters has no Hessian")


def _as_key(key) -> jax.Array:
    """None -> ``jax.random.key(0)``; an int seed i -> ``jax.random.key(i)`` (hashable, so
    ``gradflow.sweep(..., key=3)`` can pass it as a static option); keys pass through."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


@partial(jax.jit, static_argnames=("model", "loss", "estimator", "options"))
def _on_flat_hessian(model, params, x, y, key, *, loss, estimator, options):
    """``estimator(matvec, n, key, *options, dtype)`` on the loss Hessian's flat product."""
    dtype = working_dtype(params)
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    matvec = hessian_vector_product(batch_loss(model, x, y, loss), params, dtype)
    return estimator(matvec, n, key, *options, dtype)


def _extremes(matvec, n, key, iterations, dtype) -> HessianExtremes:
    ritz = lanczos_extremes(matvec, n, key, iterations, dtype)
    return HessianExtremes(ritz[0], ritz[-1])


def hessian_extremes(
    model: Model, params, x, y, loss: str = "mse", *, iterations: int = 30, key=None
) -> HessianExtremes:
    """lambda_min and lambda_max of the loss Hessian at ``params``, by Lanczos.

    Args:
      model: any :class:`gradflow.Model`. params: one seed's parameters.
      x: (batch, ...). y: labels (batch,) or targets shaped like the output. loss: its name.
      iterations: Krylov dimension k (clipped to n_params); the error of the extremes falls
        fast with k (Kaniel-Paige), and k = n_params gives them to rounding.
      key: start vector: a key, an int seed, or None (``jax.random.key(0)``).
    Returns: :class:`HessianExtremes` of scalars.
    """
    _check(model, params, x, y, loss, iterations=(iterations, 1))
    return _on_flat_hessian(
        model, params, x, y, _as_key(key), loss=loss, estimator=_extremes, options=(iterations,)
    )


def hessian_density(
    model: Model, params, x, y, loss: str = "mse", *, n_probes=8, iterations=30, key=None
) -> SpectralDensity:
    """The loss Hessian's spectral density by stochastic Lanczos quadrature.

    Args: as :func:`hessian_extremes`; n_probes: m random unit start vectors (drawn as in
      :func:`stochastic_lanczos_quadrature`, in the :func:`working_dtype`, over the flat params
      of ``ravel_pytree``); iterations: k Lanczos steps each (clipped to n_params).
    Returns: :class:`SpectralDensity`, fields (m, k); :func:`density_on_grid` smooths it.

    References: Ghorbani, Krishnan & Xiao 2019 (arXiv:1901.10159).
    """
    _check(model, params, x, y, loss, n_probes=(n_probes, 1), iterations=(iterations, 1))
    slq, options = stochastic_lanczos_quadrature, (n_probes, iterations)
    return _on_flat_hessian(
        model, params, x, y, _as_key(key), loss=loss, estimator=slq, options=options
    )


def hessian_trace(
    model: Model, params, x, y, loss: str = "mse", *, n_probes: int = 32, key=None
) -> TraceEstimate:
    """``tr H`` of the loss Hessian by Hutchinson's estimator, with its standard error.

    Args: as :func:`hessian_extremes`; n_probes: m >= 2 Rademacher probes.
    Returns: :class:`TraceEstimate` of scalars.
    """
    _check(model, params, x, y, loss, n_probes=(n_probes, 2))
    return _on_flat_hessian(
        model, params, x, y, _as_key(key), loss=loss, estimator=hutchinson, options=(n_probes,)
    )


def layer_hessian_extremes(
    model: Model, params, x, y, loss: str = "mse", *, iterations: int = 20, key=None
) -> HessianExtremes:
    """Extreme eigenvalues of each layer's diagonal Hessian block ``H_ll = d^2 C / dtheta_l^2``.

    Layer l's block is the Hessian with respect to its parameters alone, every other parameter
    held fixed (Lanczos on the product restricted to the layer's leaves). A scanned run of k
    layers (one stacked group, :class:`gradflow.groups.LeafGroup`) gives k blocks: layer j's is
    the Hessian w.r.t. the j-th slice of the run's stacked leaves, the other slices held fixed.

    Args: as :func:`hessian_extremes`; iterations: k per block (clipped to the block's size:
      blocks no larger than k are solved exactly).
    Returns: :class:`HessianExtremes` with fields of shape (L,), in the order of
      ``gradflow.layer_grad_norms(...).names``.
    """
    _check(model, params, x, y, loss, iterations=(iterations, 1))
    return _layer_extremes(model, params, x, y, _as_key(key), loss=loss, iterations=iterations)


@partial(jax.jit, static_argnames=("model", "loss", "iterations"))
def _layer_extremes(model, params, x, y, key, *, loss, iterations):
    groups = leaf_groups(model, params, x)
    dtype = working_dtype(params)
    loss_fn = batch_loss(model, x, y, loss)
    leaves, treedef = jax.tree.flatten(_upcast(params, dtype))
    rows = []  # (k, 2): lambda_min, lambda_max of each of the group's k layers
    for index, group in enumerate(groups):
        group_key = jax.random.fold_in(key, index)

        def block(j, ids=group.leaves, stacked=group.stacked, group_key=group_key):
            own = [leaves[i][j] if stacked else leaves[i] for i in ids]

            def block_loss(sub):
                new = list(leaves)
                for i, s in zip(ids, sub, strict=True):
                    new[i] = leaves[i].at[j].set(s) if stacked else s
                return loss_fn(jax.tree.unflatten(treedef, new))

            n = sum(a.size for a in own)
            if n == 0:
                return jnp.full((), jnp.nan, dtype), jnp.full((), jnp.nan, dtype)
            matvec = hessian_vector_product(block_loss, own, dtype)
            ritz = lanczos_extremes(matvec, n, jax.random.fold_in(group_key, j), iterations, dtype)
            return ritz[0], ritz[-1]

        if group.stacked:  # lax.map: one block at a time, one compiled body for the whole run
            rows.append(jnp.stack(jax.lax.map(block, jnp.arange(len(group.names))), axis=1))
        else:
            rows.append(jnp.stack(block(0))[None])
    both = jnp.concatenate(rows) if rows else jnp.zeros((0, 2), dtype)
    order = _use_order(groups)  # scanned runs of several groups: block by block, as probes do
    both = both if order is None else both[order]
    return HessianExtremes(both[:, 0], both[:, 1])
