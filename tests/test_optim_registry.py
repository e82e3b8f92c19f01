"""The optimizer registry (``passes/optimizers.py``): defaults stated once, torch's, checked by value there."""

from __future__ import annotations

import inspect

import pytest
import torch

import graphc as gc
from passes.optimizers import DEFAULTS, OPTIMIZERS, OptimizerConfig, register_optimizer

CLASSES = {cls.kind: cls for cls in (gc.optim.SGD, gc.optim.Adam, gc.optim.AdamW, gc.optim.RMSprop, gc.optim.Adagrad)}


def test_every_registered_optimizer_has_a_gc_optim_class():
    assert set(CLASSES) == set(OPTIMIZERS)
    for kind, cls in CLASSES.items():
        assert OPTIMIZERS[kind].torch_name == cls.__name__


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_signatures_are_torch_optims(kind):
    """Names, order and defaults of gc.optim's signature = the registry's = torch.optim's (as of torch 2.13)."""
    ours = list(inspect.signature(CLASSES[kind]).parameters.values())[1:]  # after params
    theirs = list(inspect.signature(getattr(torch.optim, OPTIMIZERS[kind].torch_name)).parameters.values())[1:]
    assert [p.name for p in ours] == list(DEFAULTS[kind]) == [p.name for p in theirs[:len(ours)]]
    for mine, torch_param in zip(ours, theirs):
        assert mine.default == torch_param.default == DEFAULTS[kind][mine.name], mine.name
    assert f"{kind!r}" not in CLASSES[kind].__doc__ and "lr=" in CLASSES[kind].__doc__


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_config_fills_the_defaults_and_makes_numbers_floats(kind):
    config = OptimizerConfig(kind, {"lr": 1})
    assert config.hparams == {**DEFAULTS[kind], "lr": 1.0} and type(config.hparams["lr"]) is float
    assert list(config.hparams) == list(DEFAULTS[kind])


@pytest.mark.parametrize("kind, hparams, error, message", [
    ("sgd", {"nesterov": True}, ValueError, "SGD: Nesterov momentum requires a momentum and zero dampening"),
    ("sgd", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError, "Nesterov"),
    ("sgd", {"momentum": -0.5}, ValueError, r"SGD: invalid momentum value -0.5 \(must be finite and >= 0\)"),
    ("sgd", {"dampening": float("nan")}, ValueError, "invalid dampening value nan"),
    ("adam", {"betas": (0.9, 1.0)}, ValueError, r"Adam: invalid beta parameter at index 1: 1.0 \(must be in"),
    ("adamw", {"betas": [0.9]}, ValueError, "AdamW: betas must be a pair"),
    ("adam", {"eps": "1e-8"}, TypeError, "Adam: eps value must be a number, got '1e-8'"),
    ("rmsprop", {"alpha": -1}, ValueError, "RMSprop: invalid alpha value -1.0"),
    ("rmsprop", {"centered": 1}, TypeError, "RMSprop: centered must be True or False, got 1"),
    ("adagrad", {"lr_decay": float("inf")}, ValueError, "Adagrad: invalid lr_decay value inf"),
    ("adagrad", {"lr": -0.1}, ValueError, "Adagrad: invalid learning rate -0.1"),
    ("adam", {"momentum": 0.9}, ValueError, r"adam: unknown hyperparameters \['momentum'\]"),
    ("lbfgs", {}, ValueError, "unknown optimizer 'lbfgs'; known: "),
])
def test_the_registry_checks_values(kind, hparams, error, message):
    with pytest.raises(error, match=message):
        OptimizerConfig(kind, hparams)


def test_the_front_end_reports_the_registry_checks():
    layer = gc.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        gc.optim.SGD(layer.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="RMSprop: invalid alpha value"):
        gc.optim.RMSprop(layer.parameters(), alpha=-0.1)


def test_defaults_are_stated_once_and_read_only():
    with pytest.raises(TypeError):
        DEFAULTS["sgd"]["lr"] = 1.0
    with pytest.raises(ValueError, match="registered twice"):
        register_optimizer("sgd", "SGD", lr=0.1)(type("Again", (), {}))
    assert DEFAULTS["sgd"]["lr"] == 1e-3
