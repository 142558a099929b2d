"""Conversion between this model's parameters and PyTorch's module names.

The paper computes all four gates of a layer with one affine map of the
concatenated [input; previous h]. Here that map's weight is stored as two
blocks, ``[Wx; Wh]`` stacked along the input axis: ``a = x Wx + h Wh + b``,
with Wx (D,4H), Wh (H,4H) and one bias b (4H,); the 4H gate axis holds the
blocks i, f, g, o. ``torch.nn.LSTM`` uses the same gate order but multiplies
from the other side (``a = x W_ih^T + b_ih + h W_hh^T + b_hh``) and has two
biases. So, for an ``nn.Embedding`` named ``embedding``, an ``nn.LSTM`` named
``lstm`` and an ``nn.Linear`` named ``linear``:

==========================  ==================  ==========================
PyTorch name                shape               from this model
==========================  ==================  ==========================
``embedding.weight``        (V, H)              ``embed``
``lstm.weight_ih_l{k}``     (4H, D)             ``Wx{k}.T``
``lstm.weight_hh_l{k}``     (4H, H)             ``Wh{k}.T``
``lstm.bias_ih_l{k}``       (4H,)               ``b{k}``
``lstm.bias_hh_l{k}``       (4H,)               zeros
``linear.weight``           (V, H)              ``Wy.T``
``linear.bias``             (V,)                ``by``
==========================  ==================  ==========================

Going back, ``b{k} = bias_ih_l{k} + bias_hh_l{k}``. NumPy arrays go in and
out; this module never imports torch (tensors are accepted and converted).
"""

from __future__ import annotations

import numpy as np


def to_torch_state_dict(params: dict) -> dict[str, np.ndarray]:
    """PyTorch-named NumPy arrays from this model's parameters (NumPy arrays)."""
    layers = _count_layers(params, "Wx")
    sd = {"embedding.weight": np.array(params["embed"])}
    for k in range(layers):
        b = np.asarray(params[f"b{k}"])
        sd[f"lstm.weight_ih_l{k}"] = np.ascontiguousarray(np.asarray(params[f"Wx{k}"]).T)
        sd[f"lstm.weight_hh_l{k}"] = np.ascontiguousarray(np.asarray(params[f"Wh{k}"]).T)
        sd[f"lstm.bias_ih_l{k}"] = b.copy()
        sd[f"lstm.bias_hh_l{k}"] = np.zeros_like(b)
    sd["linear.weight"] = np.ascontiguousarray(np.asarray(params["Wy"]).T)
    sd["linear.bias"] = np.array(params["by"])
    return sd


def from_torch_state_dict(sd: dict) -> dict[str, np.ndarray]:
    """This model's parameters from a PyTorch-named state dict (NumPy arrays or tensors)."""
    arrays = {name: _to_numpy(value) for name, value in sd.items()}
    layers = _count_layers(arrays, "lstm.weight_ih_l")
    expected = {"embedding.weight", "linear.weight", "linear.bias"} | {
        f"lstm.{kind}_l{k}" for k in range(layers)
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    missing = sorted(expected - set(arrays))
    if missing:
        raise ValueError(f"state dict lacks {missing}")
    params = {"embed": arrays["embedding.weight"].copy()}
    for k in range(layers):
        params[f"Wx{k}"] = np.ascontiguousarray(arrays[f"lstm.weight_ih_l{k}"].T)
        params[f"Wh{k}"] = np.ascontiguousarray(arrays[f"lstm.weight_hh_l{k}"].T)
        params[f"b{k}"] = arrays[f"lstm.bias_ih_l{k}"] + arrays[f"lstm.bias_hh_l{k}"]
    params["Wy"] = np.ascontiguousarray(arrays["linear.weight"].T)
    params["by"] = arrays["linear.bias"].copy()
    return params


def _to_numpy(value) -> np.ndarray:
    """A NumPy array from an array or a torch tensor (detached, moved to the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _count_layers(arrays: dict, prefix: str) -> int:
    """How many consecutive layers 0, 1, ... have a ``{prefix}{k}`` entry; at least one is required."""
    layers = 0
    while f"{prefix}{layers}" in arrays:
        layers += 1
    if layers == 0:
        raise ValueError(f"no layer found: expected a {prefix}0 entry")
    return layers
