"""Coordinate checks: how big every layer's activations are after a few steps, across widths.

    res = coord_check(mlp_family(16, 4), [32, 64, 128, 256], x, y, "xent",
                      parametrisation=Parametrisation(kind="mup"), learning_rate=0.01, steps=3,
                      key=key)
    res.l1.shape                     # (widths, seeds, steps + 1, layers)
    width_slopes(res)                # d log mean|x| / d log width, per layer, after the last step
    plot_coord_check(res)            # one panel per step, log-log, one line per layer

For each width and seed the model is trained ``steps`` optimizer steps on one fixed batch
(x, y), and before the first step and after every step (t = 0..steps) the check records, for
every tap of the model (:func:`gradflow.tap`: the MLP's pre-activations z^l, the transformer's
residual stream after each block) and for the output:

    l1[t]    = mean_i |x_t,i|          mup's coord-check statistic ``x.abs().mean()``
    delta[t] = mean_i |x_t,i - x_0,i|  the change since initialisation (TP5 Fig. 5 plots its std)

both over every coordinate of the batch (examples, positions, units). Under muP both stay Theta(1)
as the width grows (desideratum 1 in mup's README); under the standard parametrisation with one Adam
learning rate a hidden layer's change after one step grows like the width (an update of size
eta per entry summed over n correlated inputs: Theta(eta n)). Exception at t = 0 under muP: the
output shrinks like 1/sqrt(width) (readout variance v/m); ``readout="zero"`` removes it.

Time convention: our t = 0 is mup's t = 1 (at initialisation, before any update).

References: Yang et al. 2022, Tensor Programs V (arXiv:2203.03466), its coordinate check and
Fig. 5; microsoft/mup ``mup/coord_check.py`` (``get_coord_data``, ``plot_coord_data``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow import losses, taps
from gradflow.models import Model, check_inputs
from gradflow.mup import Family, Parametrisation, optimizer, parametrise, rescale
from gradflow.seeds import positive_int

STATS = ("l1", "delta")
OUTPUT = "output"


class CoordCheck(NamedTuple):
    """Mean absolute coordinates across widths, seeds, steps and layers.

    Attributes:
      widths: (W,) the widths, increasing.
      names: the L layer names: the model's taps in call order, then ``"output"`` (for the MLP
        the last tap ``"layer{L}"`` is the output pre-activation, so the two coincide).
      l1: (W, S, T + 1, L) ``mean |x_t|`` after t = 0..T steps.
      delta: (W, S, T + 1, L) ``mean |x_t - x_0|`` (zero at t = 0).
      loss: (W, S, T + 1) the batch loss at params_t.
      parametrisation: what was run (base_width filled in).
      learning_rate: the global learning rate eta.
    """

    widths: np.ndarray
    names: tuple[str, ...]
    l1: np.ndarray
    delta: np.ndarray
    loss: np.ndarray
    parametrisation: Parametrisation
    learning_rate: float


def _check_widths(widths) -> tuple[int, ...]:
    try:
        ws = tuple(int(w) for w in widths)
    except (TypeError, ValueError):
        raise ValueError(
            f"widths must be a sequence of positive ints, got {widths!r:.60}"
        ) from None
    if len(ws) < 2:
        raise ValueError(f"a coord check needs at least 2 widths to compare, got {list(ws)}")
    if ws[0] < 1 or any(b <= a for a, b in zip(ws, ws[1:], strict=False)):
        raise ValueError(f"widths must be positive and strictly increasing, got {list(ws)}")
    return ws


def _check_seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return tuple(range(positive_int("seeds", seeds)))
    try:
        idx = tuple(int(i) for i in seeds)
    except (TypeError, ValueError):
        idx = ()
    if not idx or min(idx) < 0 or len(set(idx)) != len(idx):
        raise ValueError(
            f"seeds must be a count n >= 1 or distinct seed indices >= 0, got {seeds!r:.60}"
        )
    return idx


def _check_args(widths, steps, seeds, learning_rate, parametrisation, loss, key):
    widths = _check_widths(widths)
    steps = positive_int("steps", steps)
    idx = _check_seeds(seeds)
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        lr = float("nan")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be a finite float > 0, got {learning_rate!r:.60}")
    if not isinstance(parametrisation, Parametrisation):
        raise ValueError(
            "parametrisation must be a gradflow.mup.Parametrisation, e.g. "
            f"Parametrisation(kind='mup'); got {parametrisation!r:.60}"
        )
    if parametrisation.base_width is None:
        parametrisation = dataclasses.replace(parametrisation, base_width=widths[0])
    if isinstance(loss, str):
        losses.get_loss(loss)
    elif not callable(loss):
        raise ValueError(f"loss must be a name in gradflow.LOSSES or a function, got {loss!r:.60}")
    if not (
        isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        and key.shape == ()
    ):  # fmt: skip
        raise ValueError(f"key must be one typed key from jax.random.key(seed), got {key!r:.60}")
    return widths, steps, idx, lr, parametrisation


def coord_check(
    family: Family,
    widths: Sequence[int],
    x: jax.Array,
    y: jax.Array,
    loss: str | Callable = "xent",
    *,
    parametrisation: Parametrisation,
    learning_rate: float,
    steps: int = 4,
    seeds: int | Sequence[int] = 4,
    key: jax.Array,
) -> CoordCheck:
    """Train every width ``steps`` steps on (x, y) and record each layer's mean |coordinate|.

    Args:
      family: ``family(width, parametrisation) -> Model`` (:func:`gradflow.mup.mlp_family`,
        :func:`gradflow.mup.transformer_family`, or your own).
      widths: at least two widths, strictly increasing.
      x: one fixed input batch, shape (batch, ...) as the models take it. y: its targets.
      loss: a per-example loss ``loss(output, y) -> (batch,)`` or a name in
        :data:`gradflow.LOSSES`; the batch loss is the mean.
      parametrisation: SP or muP, the optimizer and the base width (None: ``widths[0]``).
      learning_rate: the global learning rate eta (muP scales it per leaf).
      steps: optimizer steps T (records at t = 0..T; TP5 Fig. 5 shows 4 Adam steps).
      seeds: a count n (seeds 0..n-1) or seed indices; seed i draws from ``fold_in(key, i)`` at
        every width, so it is the same network whichever other seeds run beside it.
      key: a typed key.

    Returns:
      A :class:`CoordCheck` with arrays (W, S, T + 1, L), S the number of seeds.
    """
    widths, steps, idx, lr, p = _check_args(
        widths, steps, seeds, learning_rate, parametrisation, loss, key
    )
    per_example = losses.get_loss(loss) if isinstance(loss, str) else loss
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx, jnp.uint32))
    names, l1, delta, loss_t = None, [], [], []
    for width in widths:
        pm = parametrise(family, width, p)
        check_inputs(pm.model, x)
        abstract = jax.eval_shape(pm.init, key)
        width_names = (*taps.discover(pm.model.apply, abstract, x)[0], OUTPUT)
        if names is None:
            if isinstance(loss, str):
                losses.check_targets(loss, jax.eval_shape(pm.model.apply, abstract, x).shape, y)
            names = width_names
        elif width_names != names:
            raise ValueError(f"the taps differ between widths: {names} vs {width_names}")
        run = _trajectories(pm.model, per_example, steps, p.optimizer)
        a, d, c = run(keys, jnp.asarray(lr, jnp.float32), _as_arrays(pm.lr_multipliers),
                      _as_arrays(pm.init_multipliers), x, y)  # fmt: skip
        l1.append(np.asarray(a))
        delta.append(np.asarray(d))
        loss_t.append(np.asarray(c))
    return CoordCheck(np.asarray(widths), names, np.stack(l1), np.stack(delta), np.stack(loss_t),
                      p, lr)  # fmt: skip


def _as_arrays(tree):
    return jax.tree.map(lambda c: jnp.asarray(c, jnp.float32), tree)


@functools.lru_cache(maxsize=16)
def _trajectories(model: Model, per_example, steps: int, opt_name: str):
    """``run(keys (S,), lr, lr_mults, init_mults, x, y) -> (l1, delta, loss)`` of shapes
    (S, T+1, L), (S, T+1, L), (S, T+1): jitted, vmapped over seeds.

    The multipliers are arguments, not constants, and the function is cached by model: SP and
    muP of one MLP width share one compiled program (compiling dominates a coord check).
    """
    apply = model.apply

    def one_seed(key, lr, lr_mults, init_mults, x, y):
        params = rescale(model.init(key), init_mults)
        specs, _ = taps.discover(apply, params, x)
        zeros = taps.zeros(specs)

        def forward(params):  # the batch loss, with every tap and the output as aux
            out, values, _ = taps.run_tapped(apply, params, x, zeros)
            acts = [taps.get(values, specs, n) for n in specs]
            return jnp.mean(per_example(out, y)), [*acts, out]

        opt = optimizer(lr, lr_mults, opt_name)

        # One scan of T + 1 iterations, each recording at params_t and then stepping: the
        # model's forward and backward pass appear once in the program (compiling dominates a
        # coord check), at the cost of one unused last update. x_0 is kept from iteration 0.
        def step(carry, t):
            params, state, acts0 = carry
            (loss, acts), grads = jax.value_and_grad(forward, has_aux=True)(params)
            acts0 = jax.tree.map(lambda a, a0: jnp.where(t == 0, a, a0), acts, acts0)
            l1 = jnp.stack([jnp.mean(jnp.abs(a)) for a in acts])
            d = jnp.stack([jnp.mean(jnp.abs(a - a0)) for a, a0 in zip(acts, acts0, strict=True)])
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state, acts0), (l1, d, loss)

        acts0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(forward, params)[1])
        carry = (params, opt.init(params), acts0)
        return jax.lax.scan(step, carry, jnp.arange(steps + 1))[1]

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None, None)))


def width_slopes(result: CoordCheck, *, stat: str = "l1", step: int = -1) -> np.ndarray:
    """Least-squares slope of ``log mean_seeds(stat)`` against ``log width``, per layer.

    Args:
      result: a :class:`CoordCheck`. stat: ``"l1"`` or ``"delta"``. step: which t (default the
        last; negative counts from the end).

    Returns:
      (L,) slopes: about 0 when the layer's coordinates are width-independent (muP), > 0 when
      they grow (SP under Adam: toward 1 for a hidden layer's change after one step); NaN for a
      layer whose mean is exactly 0 at some width (e.g. delta of a layer that has not moved).
    """
    if stat not in STATS:
        raise ValueError(f"stat must be 'l1' or 'delta', got {stat!r}")
    values = getattr(result, stat)
    n_t = values.shape[2]
    if not -n_t <= step < n_t:
        raise ValueError(f"step must lie in -{n_t}..{n_t - 1}, got {step}")
    if stat == "delta" and step % n_t == 0:
        raise ValueError("delta is 0 at t = 0 (no update yet); take step >= 1")
    log_w = np.log(np.asarray(result.widths, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):  # a layer that is exactly 0: NaN slope
        log_v = np.log(np.asarray(values[:, :, step], np.float64).mean(axis=1))  # (W, L)
        log_v = np.where(np.isfinite(log_v), log_v, np.nan)
    centred = log_w - log_w.mean()
    return centred @ (log_v - log_v.mean(axis=0)) / (centred @ centred)


def plot_coord_check(result: CoordCheck, *, stat: str = "l1", layers: Sequence[str] | None = None):
    """mup's coord-check figure: one panel per step t, ``mean |x|`` vs width on log-log axes
    (shared y), one line per layer (mean over seeds), a band from the smallest to the largest
    seed. Flat lines: the parametrisation is width-stable; rising lines: it is not.

    Returns: the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from gradflow.plots import STYLE  # the house style

    if stat not in STATS:
        raise ValueError(f"stat must be 'l1' or 'delta', got {stat!r}")
    names = list(result.names) if layers is None else list(layers)
    unknown = [n for n in names if n not in result.names]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; choose from {list(result.names)}")
    values = np.asarray(getattr(result, stat), np.float64)
    n_t = values.shape[2]
    t0 = 1 if stat == "delta" else 0  # delta is 0 at t = 0: nothing to draw on log axes
    p = result.parametrisation
    with plt.rc_context(STYLE):
        # one y-axis for all panels: growth across steps shows, and a flat muP line looks flat
        fig, axes = plt.subplots(
            1, n_t - t0, figsize=(3.2 * (n_t - t0), 3.2), squeeze=False, sharey=True
        )
        for ax, t in zip(axes[0], range(t0, n_t), strict=True):
            for n in names:
                v = values[:, :, t, result.names.index(n)]
                style = "--" if n == OUTPUT else "-"  # the MLP's last tap is the output too
                (line,) = ax.plot(result.widths, v.mean(axis=1), style, marker="o", ms=3, label=n)
                ax.fill_between(result.widths, v.min(axis=1), v.max(axis=1),
                                color=line.get_color(), alpha=0.18, lw=0)  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"t = {t}")
            ax.set_xlabel("width")
        axes[0, 0].set_ylabel("mean |x|" if stat == "l1" else "mean |x_t - x_0|")
        axes[0, -1].legend(fontsize=7)
        fig.suptitle(f"{p.kind} {p.optimizer} lr={result.learning_rate:g} (base {p.base_width})")
        fig.tight_layout()
    return fig
