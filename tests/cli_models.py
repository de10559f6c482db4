"""A user's own model for the ``--model tests.cli_models:tiny`` CLI tests."""

import jax
import jax.numpy as jnp

import gradflow as gf


def tiny():
    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "hidden": {"w": jax.random.normal(k1, (64, 16)) / 8.0, "b": jnp.zeros(16)},
            "out": {"w": jax.random.normal(k2, (16, 10)) / 4.0, "b": jnp.zeros(10)},
        }

    def apply(p, x):
        h = gf.tap(jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"][None]), "h")
        return h @ p["out"]["w"] + p["out"]["b"][None]

    return gf.from_apply(init, apply)


def not_a_model():
    return 3


def needs_width(width):
    return gf.mlp([64, width, 10], "tanh", "lecun")


def too_wide():
    return gf.mlp([100, 16, 10], "tanh", "lecun")  # the digits have 64 features


def conv():
    return gf.cnn((8, 8, 1), (4,), 10)  # the flat 8x8 digits, reshaped by the CLI
