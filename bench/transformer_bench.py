"""Transformer workload for ``make bench``: per-layer gradient norms with taps, gradflow vs the
hand-written JAX a researcher would write (chunked ``jax.jit(jax.vmap(jax.grad))`` with
``tree_map(norm)`` over the parameter leaves), on the same model, weights and data.

The target (issue "Measure any JAX model"): gradflow within 1.1x of the hand-written JAX, i.e.
the probes (per-layer groups, taps at every block, per-example hidden norms) cost nothing extra.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from gradflow.losses import get_loss


def flops_per_seed(depth, width, seq, batch, ffn_mult=4) -> float:
    """Matmul FLOPs of one forward + backward pass (3x the forward's): per block the q, k, v,
    o projections (4 d^2 per token), the FFN (2 ffn_mult d^2 per token), and the attention
    scores and mixing (2 seq d per token)."""
    per_token = depth * (2 * 4 * width**2 + 2 * 2 * ffn_mult * width**2 + 2 * 2 * seq * width)
    return 3.0 * batch * seq * per_token


def workload(cfg, interleaved, matmul_fn, gflops, block, use_torch=False) -> dict:
    depth, width, heads = cfg["t_depth"], cfg["t_width"], cfg["t_heads"]
    seq, batch, seeds, chunk = cfg["t_seq"], cfg["t_batch"], cfg["t_seeds"], cfg["t_chunk"]
    vocab, n_out = 256, 10
    model = gradflow.transformer(depth, width, heads, seq, vocab=vocab, n_out=n_out, norm="pre")
    x = jax.random.randint(jax.random.key(1), (batch, seq), 0, vocab)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, n_out)
    flops = flops_per_seed(depth, width, seq, batch)
    print(
        f"\nTransformer: pre-LN depth {depth}, width {width}, {heads} heads, sequence {seq}, "
        f"batch {batch}, tokens, xent; {seeds} seeds in chunks of {chunk}, init included; "
        f"{flops / 1e9:.1f} GFLOP/seed"
    )
    keys = gradflow.seed_keys(seeds)
    loss_fn = get_loss("xent")

    def one(key):  # what a researcher writes: grad of the loss, the norm of every leaf
        params = model.init(key)
        grads = jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, x), y)))(params)
        return jax.tree.map(lambda g: jnp.sqrt(jnp.sum(jnp.square(g))), grads)

    hand_chunk = jax.jit(jax.vmap(one))

    def hand():
        outs = [hand_chunk(keys[i : i + chunk]) for i in range(0, seeds, chunk)]
        return jax.tree.map(lambda *a: np.concatenate([np.asarray(v) for v in a]), *outs)

    def ours():
        return gradflow.sweep(
            gradflow.layer_grad_norms, model, keys, x, y, loss="xent", chunk_size=chunk, quiet=True
        )

    peak, peak_flops = matmul_fn(cfg["matmul_n"])
    block(ours())
    block(hand())
    swept, leaves = ours(), hand()
    # The same gradient two ways: the sum of squares over all parameters agrees.
    total_ours = np.sum(swept.params.astype(np.float64) ** 2, axis=1)
    total_hand = sum(np.asarray(v, np.float64) ** 2 for v in jax.tree.leaves(leaves))
    check = float(np.max(np.abs(total_ours - total_hand) / total_hand))
    fns = {"matmul": peak, "gradflow.sweep": ours, "hand-written jax": hand}
    if use_torch:
        from torch_transformer import TransformerReference

        ref = TransformerReference(depth, width, heads, seq, vocab, n_out, x, y)
        ref.func(chunk, chunk)  # warm-up
        fns["torch.func"] = lambda: ref.func(seeds, chunk)
    best = interleaved(fns, cfg["t_rounds"])
    peak_gflops = gflops(peak_flops, best.pop("matmul"))
    results = {}
    for name, seconds in best.items():
        results[name] = {
            "seconds": seconds,
            "fraction_of_peak": gflops(flops * seeds, seconds) / peak_gflops,
            "ratio_to_gradflow": seconds / best["gradflow.sweep"],
        }
    ratio = best["gradflow.sweep"] / best["hand-written jax"]
    print(f"  {'':28}{'seconds':>10}{'% of peak':>12}{'vs gradflow':>13}")
    for name, r in results.items():
        print(
            f"  {name:28}{r['seconds']:10.3f}{r['fraction_of_peak']:12.0%}"
            f"{r['ratio_to_gradflow']:12.2f}x"
        )
    print(
        f"  check: total squared gradient norm, gradflow vs hand-written: max rel diff {check:.1e}"
    )
    return {
        "config": {**model.config.to_dict(), "batch": batch, "loss": "xent"},
        "seeds": seeds, "chunk_size": chunk, "flops_per_seed": flops,
        "matmul_peak_gflops": peak_gflops, "results": results,
        "gradflow_over_hand": ratio, "checks": {"total squared norm, max rel diff": check},
        "layers": len(swept.names), "taps": len(swept.hidden_names),
    }  # fmt: skip
