"""gradflow.train against hand-written loops: Nielsen's network2 update, optax chains built from
primitives, per-seed Python loops, and layer_grad_norms at the recorded parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow import train as tr
from gradflow.train import train, train_trajectory


def _reference(model, params, x, y, loss, steps, lr, lmbda_over_n):
    """Python loop: record norms, then W <- (1 - lr c) W - lr dC/dW, b <- b - lr dC/db."""
    loss_fn = gf.losses.get_loss(loss)
    grad = jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, x), y)))
    records = []
    for _ in range(steps):
        records.append(gf.layer_grad_norms(model, params, x, y, loss))
        g = grad(params)
        params = [
            {"w": (1 - lr * lmbda_over_n) * p["w"] - lr * gl["w"], "b": p["b"] - lr * gl["b"]}
            for p, gl in zip(params, g, strict=True)
        ]
    records.append(gf.layer_grad_norms(model, params, x, y, loss))
    return jax.tree.map(lambda *r: np.stack(r), *records)


def _leaves_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(scope="module")
def small():
    """A sigmoid net on 24 examples of 6 features, 3 classes."""
    model = gf.mlp([6, 8, 8, 3], "sigmoid", "nielsen")
    x = jax.random.uniform(jax.random.key(1), (24, 6))
    y = jax.random.randint(jax.random.key(2), (24,), 0, 3)
    return model, model.init(jax.random.key(0)), x, y


def test_trajectory_equals_python_loop():
    model = gf.mlp([12, 8, 8, 4], "sigmoid", "nielsen")
    x = jax.random.uniform(jax.random.key(1), (32, 12))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
    params = model.init(jax.random.key(0))
    got = train_trajectory(
        model, params, x, y, "sigmoid_xent", steps=6, learning_rate=0.5, weight_decay=0.05
    )
    want = _reference(model, params, x, y, "sigmoid_xent", 6, 0.5, 0.05)
    assert got.weights.shape == (7, 3)
    # float32, a few steps of the same arithmetic in a different order: rounding only.
    for field in ("weights", "biases", "preacts", "weight_norms", "loss"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=2e-5)
    # Training moves the network: the loss goes down.
    assert got.loss[-1, 0] < got.loss[0, 0]


def test_sweep_with_traced_learning_rate_equals_per_seed_calls():
    model = gf.mlp([6, 5, 3], "tanh", "lecun")
    x = jax.random.normal(jax.random.key(3), (16, 6))
    y = jax.random.normal(jax.random.key(4), (16, 3))
    out = gf.sweep(train_trajectory, model, 3, x, y, steps=4, hyper={"learning_rate": 0.2})
    for i, key in enumerate(gf.seed_keys(3)):
        one = train_trajectory(model, model.init(key), x, y, steps=4, learning_rate=0.2)
        np.testing.assert_allclose(out.weights[i], one.weights, rtol=1e-5)
    assert out.weights.shape == (3, 5, 2)


def test_recording_does_not_change_training(small):
    """Same final params and optimizer state, bit for bit, whether or not probes are recorded:
    a recording step takes its update from the probes' backward pass, a plain step from
    jax.grad, and both must be the same arithmetic (record_every=2 runs both kinds)."""
    model, params, x, y = small
    kw = dict(steps=4, optimizer="adam", learning_rate=0.05, weight_decay=0.01, batch_size=5)
    plain = train(model, params, x, y, "sigmoid_xent", key=7, record_every=0, **kw)
    assert plain.trajectory is None
    rec = train(model, params, x, y, "sigmoid_xent", key=7, record_every=2, **kw)
    _leaves_equal(rec.params, plain.params)
    _leaves_equal(rec.opt_state, plain.opt_state)
    # The batches follow the key: the same key gives the same run, another key another one.
    again = train(model, params, x, y, "sigmoid_xent", key=jax.random.key(7), record_every=0, **kw)
    other = train(model, params, x, y, "sigmoid_xent", key=8, record_every=0, **kw)
    _leaves_equal(again.params, plain.params)
    assert not np.array_equal(other.params[0]["w"], plain.params[0]["w"])
    # The probes' gradient is jax.grad of the batch-mean loss (same ops; float32 rounding at most).
    loss_fn = gf.losses.get_loss("sigmoid_xent")
    want = jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, x), y)))(params)
    _, back = gf.probes.backward_with_output(model, params, x, y, "sigmoid_xent")
    for u, v in zip(jax.tree.leaves(back[1]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("every", "steps"), [(3, 12), (12, 12), (1, 1)])
def test_recording_every_k_or_once_does_not_change_training(every, steps):
    """record_every=3 runs its plain steps as a scan (the sweep's plan counts them), and
    record_every=steps records once (its one-trip loop hidden from XLA, which would inline it
    and compile it with the last probe: Adam's, network2's and momentum's last bits moved on
    this full-batch tanh net), as a one-step unrecorded run steps once: bit for bit the
    unrecorded run."""
    model = gf.mlp([6, 16, 16, 3], "tanh", "nielsen")
    x = jax.random.uniform(jax.random.key(1), (40, 6))
    y = jax.random.randint(jax.random.key(2), (40,), 0, 3)
    params = model.init(jax.random.key(0))
    kw = dict(steps=steps, optimizer="adam", learning_rate=0.05)
    plain = train(model, params, x, y, "xent", record_every=0, **kw)
    rec = train(model, params, x, y, "xent", record_every=every, **kw)
    _leaves_equal(rec.params, plain.params)
    _leaves_equal(rec.opt_state, plain.opt_state)
    assert rec.trajectory.loss.shape == (steps // every + 1,)


def test_full_batch_feature_major_input_is_stored_transposed_once():
    """A full-batch run hands a feature-major model its input through models.loop_input: x.T
    stored before the loop, so the first layer's weight gradient contracts the minor axis of
    a stored (n, batch) array (lhs_contracting_dims={1}), where the model's own x.T folded into
    the product contracts x's major axis ({0}). Same training to float rounding, and
    recording still changes nothing, bit for bit."""
    import dataclasses
    import re

    model = gf.mlp([40, 16, 3], "sigmoid", "nielsen")
    assert model.feature_major
    x = jax.random.uniform(jax.random.key(1), (64, 40))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 3)
    params = model.init(jax.random.key(0))
    get = gf.models.loop_input(model, x)
    np.testing.assert_array_equal(get(), x)
    plain_model = dataclasses.replace(model, feature_major=False)  # the same apply, x as is
    assert gf.models.loop_input(plain_model, x)() is x

    def weight_gradient_contraction(m):
        rates = tr.rates_of("sgd", 0.1, None)
        hlo = tr._train.lower(
            m, params, x, y, None, None, rates, optimizer="sgd", loss="sigmoid_xent",
            steps=3, batch_size=None, record_every=0,
        ).compile().as_text()  # fmt: skip
        dots = re.findall(r"f32\[40,16\]\{1,0\} dot\(.*?lhs_contracting_dims=\{(\d)\}", hlo)
        assert len(dots) == 1, dots
        return dots[0]

    assert weight_gradient_contraction(model) == "1"
    assert weight_gradient_contraction(plain_model) == "0"
    kw = dict(steps=4, optimizer="adam", learning_rate=0.05)
    got = train(model, params, x, y, "sigmoid_xent", record_every=0, **kw)
    want = train(plain_model, params, x, y, "sigmoid_xent", record_every=0, **kw)
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)  # float32, 4 Adam steps
    rec = train(model, params, x, y, "sigmoid_xent", record_every=2, **kw)
    _leaves_equal(rec.params, got.params)
    _leaves_equal(rec.opt_state, got.opt_state)


def test_trajectory_equals_handwritten_optax_loop(small):
    """Records against layer_grad_norms at the params of a Python optax loop (momentum, with
    weight decay on weights only), on the documented batches, and eval loss/accuracy."""
    model, params, x, y = small
    lr, wd, batch, steps, every = 0.3, 0.02, 5, 8, 2  # 4 batches per epoch: epochs 0, 1 and 2
    ex = jax.random.uniform(jax.random.key(5), (7, 6))
    ey = jax.random.randint(jax.random.key(6), (7,), 0, 3)
    got = train(
        model, params, x, y, "sigmoid_xent", steps=steps, optimizer="momentum",
        learning_rate=lr, weight_decay=wd, batch_size=batch, key=jax.random.key(11),
        record_every=every, eval_x=ex, eval_y=ey,
    )  # fmt: skip
    mask = [{"w": True, "b": False} for _ in params]
    tx = optax.chain(optax.add_decayed_weights(wd, mask=mask), optax.trace(0.9), optax.scale(-lr))
    loss_fn = gf.losses.get_loss("sigmoid_xent")

    @jax.jit
    def step(p, state, xb, yb):
        g = jax.grad(lambda q: jnp.mean(loss_fn(model.apply(q, xb), yb)))(p)
        u, state = tx.update(g, state, p)
        ratio = jnp.stack(
            [jnp.linalg.norm(a["w"]) / jnp.linalg.norm(b["w"]) for a, b in zip(u, p, strict=True)]
        )
        acc = jnp.mean(jnp.argmax(model.apply(p, xb), -1) == yb)
        out = model.apply(p, ex)
        evals = jnp.mean(loss_fn(out, ey)), jnp.mean(out.argmax(-1) == ey)
        return optax.apply_updates(p, u), state, (ratio, acc, *evals)

    p, state, rows = params, tx.init(params), []
    for s in range(steps + 1):
        epoch, i = divmod(s, len(x) // batch)
        perm = jax.random.permutation(jax.random.fold_in(jax.random.key(11), epoch), len(x))
        idx = perm[i * batch : (i + 1) * batch]
        xb, yb = x[idx], y[idx]
        if s % every == 0:
            rows.append(
                (gf.layer_grad_norms(model, p, xb, yb, "sigmoid_xent"), *step(p, state, xb, yb)[2])
            )
        if s < steps:
            p, state, _ = step(p, state, xb, yb)
    t = got.trajectory
    np.testing.assert_array_equal(t.step, [0, 2, 4, 6, 8])
    # float32, same arithmetic in another order (and under scan/jit): rounding only.
    for r, (norms, ratio, acc, eval_loss, eval_acc) in enumerate(rows):
        for field in ("weights", "biases", "weight_norms", "hidden", "weights_per_example"):
            np.testing.assert_allclose(
                getattr(t.norms, field)[r], getattr(norms, field), rtol=1e-5, err_msg=field
            )
        np.testing.assert_allclose(t.loss[r], norms.loss[0], rtol=1e-5)
        if r < len(rows) - 1:  # the last record takes no step
            np.testing.assert_allclose(t.update_ratio[r], ratio, rtol=1e-5)
        np.testing.assert_allclose([t.accuracy[r], t.eval_accuracy[r]], [acc, eval_acc])
        np.testing.assert_allclose(t.eval_loss[r], eval_loss, rtol=1e-5)
    assert np.all(np.isnan(t.update_ratio[-1]))
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


def test_batches_follow_the_key():
    """Each epoch is one permutation of fold_in(key, epoch), cut into n // batch_size batches."""
    n, b, steps = 10, 3, 6  # 3 batches per epoch: 2 epochs
    x = jnp.arange(n)[:, None]  # the data are their own indices

    @jax.jit
    def batches(key):
        def one(perm, s):
            xb, _, perm = tr._batch(x, x[:, 0], key, b, s, perm)
            return perm, xb[:, 0]

        return jax.lax.scan(one, jnp.arange(n), jnp.arange(steps))[1]

    got = np.asarray(batches(jax.random.key(0)))
    for epoch in range(2):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(0), epoch), n))
        # The last n % b = 1 example of each epoch's permutation is skipped.
        np.testing.assert_array_equal(got[3 * epoch : 3 * epoch + 3].ravel(), perm[:9])
    assert not np.array_equal(got[:3], got[3:])  # a fresh order each epoch
    assert not np.array_equal(np.asarray(batches(jax.random.key(1))), got)


def test_named_optimizers_equal_explicit_updates():
    """Each name against its chain written from optax primitives; network2 through train
    against Nielsen's formula W <- (1 - lr lmbda/n) W - lr dC/dW, b <- b - lr dC/db, in numpy."""
    model = gf.mlp([3, 4, 2], "tanh", "lecun")
    x = jax.random.normal(jax.random.key(1), (6, 3))
    y = jax.random.randint(jax.random.key(2), (6,), 0, 2)
    params = model.init(jax.random.key(0))
    lr, wd, steps = 0.1, 0.05, 3
    mask = [{"w": True, "b": False} for _ in params]
    decay = optax.add_decayed_weights(wd, mask=mask)
    chains = {
        "sgd": optax.chain(decay, optax.scale(-lr)),
        "network2": optax.chain(decay, optax.scale(-lr)),
        "momentum": optax.chain(decay, optax.trace(0.9), optax.scale(-lr)),
        "adam": optax.chain(decay, optax.scale_by_adam(), optax.scale(-lr)),
        "adamw": optax.chain(optax.scale_by_adam(), decay, optax.scale(-lr)),
    }
    assert set(chains) == set(tr.OPTIMIZERS)
    loss_fn = gf.losses.get_loss("xent")
    grad = jax.jit(jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, x), y))))
    for name, want in chains.items():
        got = tr.make_optimizer(name, lr, wd)
        p, q, s_got, s_want = params, params, got.init(params), want.init(params)
        for _ in range(steps):
            u, s_got = got.update(grad(p), s_got, p)
            v, s_want = want.update(grad(q), s_want, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8, err_msg=name)  # rounding
    # network2 through train, in float64 numpy from float32 gradients: float32 rounding.
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    for _ in range(steps):
        g = grad(jax.tree.map(jnp.float32, p))
        p = [
            {"w": (1 - lr * wd) * q["w"] - lr * np.asarray(gl["w"]), "b": q["b"] - lr * gl["b"]}
            for q, gl in zip(p, g, strict=True)
        ]
    got = train(model, params, x, y, "xent", steps=steps, optimizer="network2",
                learning_rate=lr, weight_decay=wd, record_every=0)  # fmt: skip
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
    # Any optax transformation: the same update as its name.
    same = train(model, params, x, y, "xent", steps=steps, optimizer=tr.gd_optimizer(lr, wd),
                 record_every=0)  # fmt: skip
    for u, v in zip(jax.tree.leaves(same.params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6)


def test_grid_sweep_over_seeds_equals_per_seed_calls(small):
    """grid_sweep: (sigma_w2 x learning rate x seed) vmapped in one program, the init scale and
    learning rate traced, weight decay a shared traced hyper; each item equals a plain call."""
    _, _, x, y = small
    model = gf.mlp([6, 8, 8, 3], "sigmoid", "gaussian")
    kw = dict(loss="sigmoid_xent", steps=4, optimizer="adam", batch_size=6, key=3, record_every=2)
    sigma_w2, lr = [0.5, 2.0], [0.01, 0.1]
    grid = gf.grid_sweep(
        train, model, 2, x, y, grid={"sigma_w2": sigma_w2, "learning_rate": lr},
        hyper={"weight_decay": 0.01}, **kw,
    )  # fmt: skip
    assert grid.trajectory.norms.weights.shape == (2, 2, 2, 3, 3)

    def close(a, b):  # vmap batches the same float32 arithmetic: rounding only
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)

    for i, s2 in enumerate(sigma_w2):
        for j, rate in enumerate(lr):
            for k, key in enumerate(gf.seed_keys(2)):
                params = model.init(key, sigma_w2=s2)
                one = train(model, params, x, y, learning_rate=rate, weight_decay=0.01, **kw)
                jax.tree.map(close, jax.tree.map(lambda a, i=i, j=j, k=k: a[i, j, k], grid), one)


def test_from_apply_model_on_a_nested_dict():
    """A gf.from_apply model on a nested dict (biases named "bias", never decayed): the last
    record equals layer_grad_norms at the final params, which equal a hand-written optax loop
    with the weight-decay mask written out."""

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "enc": {"kernel": jax.random.normal(k1, (4, 5)) / 2, "bias": jnp.full((5,), 0.1)},
            "head": {"out": {"kernel": jax.random.normal(k2, (5, 2)) / 2}},
        }

    def apply(p, x):
        h = gf.tap(x @ p["enc"]["kernel"] + p["enc"]["bias"][None], "enc")
        return jnp.tanh(h) @ p["head"]["out"]["kernel"]

    x = jax.random.normal(jax.random.key(1), (8, 4))
    y = jax.random.normal(jax.random.key(2), (8, 2))
    nested = gf.from_apply(init, apply)
    params = nested.init(jax.random.key(0))
    # A function of the (traced) rates may build the optimizer (gd_optimizer is one).
    got = train(nested, params, x, y, steps=3, record_every=3, weight_decay=0.5,
                optimizer=tr.gd_optimizer)  # fmt: skip
    want = gf.layer_grad_norms(nested, got.params, x, y)
    assert got.trajectory.norms.names == want.names and len(want.names) == 2
    for field in ("weights", "biases", "weight_norms", "hidden", "loss"):
        np.testing.assert_allclose(  # same float32 arithmetic, another program: rounding
            getattr(got.trajectory.norms, field)[-1], getattr(want, field), rtol=1e-5
        )
    mask = {"enc": {"kernel": True, "bias": False}, "head": {"out": {"kernel": True}}}
    tx = optax.chain(optax.add_decayed_weights(0.5, mask=mask), optax.scale(-0.1))
    p, state = params, tx.init(params)
    for _ in range(3):
        g = jax.grad(lambda q: jnp.mean(gf.losses.mse(apply(q, x), y)))(p)
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


def test_bad_input(small):
    model, params, x, y = small
    cases = [
        (dict(steps=-1), "steps must be an int"),
        (dict(steps=2, batch_size=25, key=0), "batch_size=25 exceeds the 24"),
        (dict(steps=2, batch_size=4), "batch_size needs key"),
        (dict(steps=2, optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
        (dict(steps=5, record_every=2), "record_every=2 must divide steps=5"),
        (dict(steps=2, optimizer=optax.sgd(0.1), learning_rate=0.1), "cannot be set beside"),
        (dict(steps=2, weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(steps=2, eval_x=x), "both eval_x and eval_y"),
        (dict(steps=2, batch_size=4, key="seed"), "key must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            train(model, params, x, y, "sigmoid_xent", **kwargs)
    with pytest.raises(ValueError, match="steps must be an int"):
        train_trajectory(model, params, x, y, steps=-1)
    with pytest.raises(ValueError, match="weight_decay"):
        train_trajectory(model, params, x, y, steps=1, weight_decay=-1.0)
