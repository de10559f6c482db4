"""Recurrent layers: a vanilla (Elman) RNN cell and an LSTM cell, each run over time by one scan.

A recurrent layer reads ``x`` of shape (batch, time, n_in) from ``h_0 = 0`` (and ``c_0 = 0``) and
returns the last hidden state ``h_T``, shape (batch, n_hidden). Its hidden states are taps: ``h``
(and ``c`` for the LSTM), each of shape (batch, time, n_hidden), with the probe's perturbation
added at every step inside the scan, so ``dC/dh_t`` for every t comes from one backward pass
(:func:`gradflow.probes.time_grad_norms`).

References: Elman 1990; Hochreiter & Schmidhuber 1997; Bengio, Simard & Frasconi 1994; Pascanu,
Mikolov & Bengio 2013 (arXiv:1211.5063).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradflow import activations, inits, rng, taps
from gradflow.layers import Layer


def init_recurrent(
    k_in, k_rec, n_in, n_hidden, cell, init, recurrent_init, sigma_w2, sigma_b2, forget_bias
):
    """``{"w_in": (n_in, g n_h), "w_rec": (n_h, g n_h), "b": (g n_h,)}``, g = 4 for an LSTM.

    ``W_in`` is drawn by ``init`` from ``k_in``; each of the g recurrent blocks by
    ``recurrent_init`` (gain ``sigma_w2``) from its own split of ``k_rec``; the bias is the sum of
    the input and recurrent draws (plus ``forget_bias`` on the LSTM forget gate).
    """
    n_gates = 4 if cell == "lstm" else 1
    inp = inits.init_dense(k_in, n_in, n_gates * n_hidden, init)
    rec = [
        inits.init_dense(k, n_hidden, n_hidden, recurrent_init, sigma_w2, sigma_b2)
        for k in rng.split(k_rec, n_gates)
    ]
    b = inp["b"] + jnp.concatenate([r["b"] for r in rec])
    if cell == "lstm":
        b = b.at[n_hidden : 2 * n_hidden].add(forget_bias)
    return {"w_in": inp["w"], "w_rec": jnp.concatenate([r["w"] for r in rec], axis=1), "b": b}


def recurrent(
    n_hidden: int,
    cell: str = "rnn",
    *,
    activation: str = "tanh",
    init: str = "lecun",
    recurrent_init: str = "orthogonal",
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    forget_bias: float = 1.0,
    name: str | None = None,
) -> Layer:
    """An RNN (``h_t = phi(x_t W_in + h_{t-1} W_rec + b)``) or LSTM layer over a sequence.

    LSTM: gates ``[i, f, g, o] = x_t W_in + h_{t-1} W_rec + b``; ``c_t = sigma(f) c_{t-1} +
    sigma(i) tanh(g)``, ``h_t = sigma(o) tanh(c_t)``. ``sigma_w2``/``sigma_b2`` apply to the
    recurrent init (gaussian/orthogonal); traced ``hyper`` overrides of those names too.

    Returns: a :class:`Layer` mapping (batch, time, n_in) to h_T of shape (batch, n_hidden);
    taps ``h`` (and ``c``), shape (batch, time, n_hidden), meta ``role="state"``/``"cell"``.
    """
    if cell not in ("rnn", "lstm"):
        raise ValueError(f"cell must be 'rnn' or 'lstm', got {cell!r}")
    if not isinstance(n_hidden, int) or n_hidden <= 0:
        raise ValueError(f"n_hidden must be a positive int, got {n_hidden!r}")
    phi = activations.get(activation).fn
    inits.check_init(init)
    inits.check_init(recurrent_init)
    sw2, sb2 = inits.check_sigmas(recurrent_init, sigma_w2, sigma_b2)
    sweepable = recurrent_init in ("gaussian", "orthogonal")
    forget_bias = float(forget_bias)

    def init_fn(key, in_shape, hyper):
        w2 = hyper.get("sigma_w2", sw2) if sweepable else sw2
        b2 = hyper.get("sigma_b2", sb2) if sweepable else sb2
        k_in, k_rec = rng.split(key)
        args = (n_hidden, cell, init, recurrent_init, w2, b2, forget_bias)
        return init_recurrent(k_in, k_rec, in_shape[-1], *args)

    def apply(params, x):
        batch, time, _ = x.shape
        u = jnp.einsum("btf,fg->tbg", x, params["w_in"]) + params["b"][None, None, :]
        shape = (batch, time, n_hidden)
        p_h = taps.perturbation("h", shape, x.dtype, role="state")
        p_c = taps.perturbation("c", shape, x.dtype, role="cell") if cell == "lstm" else None
        zeros = jnp.zeros((time, batch, n_hidden), x.dtype)
        d_h = zeros if p_h is None else jnp.swapaxes(p_h, 0, 1)
        d_c = zeros if p_c is None else jnp.swapaxes(p_c, 0, 1)
        h0 = jnp.zeros((batch, n_hidden), x.dtype)
        if cell == "lstm":

            def step(carry, xs):
                h, c = carry
                u_t, dh, dc = xs
                i, f, g, o = jnp.split(u_t + h @ params["w_rec"], 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g) + dc
                h = jax.nn.sigmoid(o) * jnp.tanh(c) + dh
                return (h, c), (h, c)

            (h, _), (hs, cs) = jax.lax.scan(step, (h0, h0), (u, d_h, d_c))
            if p_c is not None:
                taps.set_value("c", jnp.swapaxes(cs, 0, 1))
        else:

            def step(h, xs):
                u_t, dh = xs
                h = phi(u_t + h @ params["w_rec"]) + dh
                return h, h

            h, hs = jax.lax.scan(step, h0, (u, d_h))
        if p_h is not None:
            taps.set_value("h", jnp.swapaxes(hs, 0, 1))
        return h

    def out_shape(in_shape):
        if len(in_shape) != 2:
            raise ValueError(
                f"a recurrent layer reads (time, features) per example, got shape {in_shape}"
            )
        return (n_hidden,)

    spec = ("recurrent", cell, n_hidden, activation, init, recurrent_init, sw2, sb2, forget_bias)
    return Layer(cell, init_fn, apply, out_shape, spec, name, True)
