"""Wrapping and listing real models (issue 14): what a user pays to see the
parameters of a model from a library they already use, against that
framework's own listing of the same model.

The models are built from their configurations with random weights (no
downloads): torchvision ``resnet50`` and a BERT-base ``BertModel`` on torch,
``keras.applications.ResNet50`` on TensorFlow, gluon ``resnet50_v1`` on
MXNet. ``--quick`` builds small ones (resnet18, a tiny BERT). A library
that is not installed leaves its model out of the row set, with the reason.

Ours is ``up.wrap(model)`` plus the listing of every parameter and buffer
(name, shape, dtype), so a cached tree cannot hide the first walk; native
is the framework's listing of the same entries.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import unified_params as up

Listing = Callable[[], list[tuple[str, Any, Any]]]


def _ours(model: Any, variables: Any = None) -> Listing:
    def run() -> list[tuple[str, Any, Any]]:
        m = up.wrap(model) if variables is None else up.wrap(model, variables)
        return [(n, p.shape, p.dtype) for d in (m.params, m.buffers) for n, p in d.items()]

    return run


def _torch_models(quick: bool) -> dict[str, tuple[Any, Listing]]:
    import torch

    def native(model: Any) -> Listing:
        def run() -> list[tuple[str, Any, Any]]:
            return [(n, tuple(t.shape), t.dtype) for it in (model.named_parameters(), model.named_buffers())
                    for n, t in it]
        return run

    out: dict[str, tuple[Any, Listing]] = {}
    torch.manual_seed(0)
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        net = (torchvision.models.resnet18 if quick else torchvision.models.resnet50)(weights=None)
        out["torchvision resnet18" if quick else "torchvision resnet50"] = (net, native(net))
    if importlib.util.find_spec("transformers") is not None:
        from transformers import BertConfig, BertModel

        cfg = (BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          vocab_size=100) if quick else BertConfig())  # BertConfig() is BERT-base
        bert = BertModel(cfg)
        out["BERT tiny" if quick else "BERT-base"] = (bert, native(bert))
    return out


def _keras_models(quick: bool) -> dict[str, tuple[Any, Listing]]:
    import keras

    size = 32 if quick else 224
    net = (keras.applications.MobileNetV2 if quick else keras.applications.ResNet50)(
        weights=None, input_shape=(size, size, 3))

    def native() -> list[tuple[str, Any, Any]]:
        return [(v.path, tuple(v.shape), v.dtype) for v in net.weights]

    return {"keras MobileNetV2" if quick else "keras ResNet50": (net, native)}


def _gluon_models(quick: bool) -> dict[str, tuple[Any, Listing]]:
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    net = (vision.resnet18_v1 if quick else vision.resnet50_v1)()
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))

    def native() -> list[tuple[str, Any, Any]]:
        return [(n, p.shape, p.dtype) for n, p in net.collect_params().items()]

    return {"gluon resnet18_v1" if quick else "gluon resnet50_v1": (net, native)}


MODELS: dict[str, Callable[[bool], dict[str, tuple[Any, Listing]]]] = {
    "torch": _torch_models, "tensorflow": _keras_models, "mxnet": _gluon_models}


def case_real(backend: str, spec: dict[str, Any],
              rounds: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """``{"models": {name: rounds result + n_entries}}``, or the reason no
    model exists for ``backend``."""
    if backend not in MODELS:
        return {"models": {}, "skipped": f"no model library for {backend} in this case"}
    out: dict[str, Any] = {}
    for name, (model, native) in MODELS[backend](bool(spec.get("quick"))).items():
        ours = _ours(model)
        n = len(ours())
        if n != len(native()):
            raise AssertionError(f"{name}: {n} entries listed, the framework lists {len(native())}")
        res = rounds({"native": native, "ours": ours}, spec["repeat"], spec["budget"])
        out[name] = {**res, "n_entries": n}
    return {"models": out}
