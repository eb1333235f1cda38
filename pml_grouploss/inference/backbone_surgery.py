"""Backbone surgery for Group Loss++ inference: mixed pooling (§4.2) and leaky-ReLU (§4.3).

Both functions find the *global pooling* of a backbone in its ``torch.fx`` graph, which makes
them independent of how the backbone is written: torchvision's ResNet pools with the module
``avgpool``, DenseNet calls ``F.adaptive_avg_pool2d`` inside ``forward``, GoogLeNet and
Inception v3 pool the concatenation of the branches of their last inception block.

The final activation is found by walking back from the pooling's input through concatenations.
It is replaced *as a graph node*, never by module name: torchvision's ``Bottleneck`` calls the
same ``relu`` module three times, and DenseNet applies ``F.relu`` in ``forward``; both are
handled by rewriting only the node that feeds the pooling.

Traced models are returned as ``torch.fx.GraphModule``s built from the model in eval mode
(auxiliary heads of GoogLeNet/Inception are not called by the graph but are kept, so the
``state_dict`` keys and values are unchanged and checkpoints load both ways). Inputs are never
modified in place.
"""

from __future__ import annotations

import copy
from typing import List, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F

from .._validation import check_number
from ..functional.pooling import DEFAULT_ALPHA
from .mixed_pooling import MixedPooling

#: GL++ Table 7: LeakyReLU negative slope per dataset (CUB 0.75, Cars196 0.4, In-Shop 1.0, SOP 1.0).
DEFAULT_NEGATIVE_SLOPE = 0.75

_SUPPORTED = (
    "torchvision ResNet, DenseNet, GoogLeNet and Inception v3 (or any torch.fx-traceable model "
    "whose embedding is a global average/mixed pooling of a ReLU output)"
)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, getattr(F, "relu_", F.relu))
_CAT_FUNCTIONS = (torch.cat, torch.concat) if hasattr(torch, "concat") else (torch.cat,)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        if isinstance(m, MixedPooling):
            return True
        return super().is_leaf_module(m, qualname)


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module ({_SUPPORTED}), got {type(model).__name__}")


def _trace(model: torch.nn.Module) -> Tuple[torch.nn.Module, fx.Graph]:
    """Deep-copy ``model``, trace it in eval mode. Returns ``(copy, graph)``."""
    root = copy.deepcopy(model)
    root.eval()
    try:
        graph = _Tracer().trace(root)
    except Exception as e:  # torch.fx raises many exception types for untraceable code
        raise TypeError(
            f"unsupported backbone {type(model).__name__}: torch.fx could not trace it ({e}). "
            f"Supported: {_SUPPORTED}"
        ) from e
    return root, graph


def _is_global_size(size) -> bool:
    if isinstance(size, int):
        return size == 1
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return all(s == 1 for s in size)
    return False


def _find_global_pool(root: torch.nn.Module, graph: fx.Graph) -> fx.Node:
    """The last global pooling node of the graph (``(N, C, H, W) -> (N, C, 1, 1)``)."""
    found: List[fx.Node] = []
    for node in graph.nodes:
        if node.op == "call_module":
            mod = root.get_submodule(node.target)
            if isinstance(mod, MixedPooling) or (
                isinstance(mod, torch.nn.AdaptiveAvgPool2d) and _is_global_size(mod.output_size)
            ):
                found.append(node)
        elif node.op == "call_function" and node.target in (
            F.adaptive_avg_pool2d,
            torch._C._nn.adaptive_avg_pool2d,
        ):
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            if _is_global_size(size):
                found.append(node)
    if not found:
        raise ValueError(
            "unsupported backbone: no global pooling (AdaptiveAvgPool2d((1, 1)), "
            "F.adaptive_avg_pool2d(x, 1) or MixedPooling) found in its graph. "
            f"Supported: {_SUPPORTED}"
        )
    return found[-1]


def _is_relu(root: torch.nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), torch.nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _describe(root: torch.nn.Module, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(root.get_submodule(node.target)).__name__})"
    return f"{node.op} {getattr(node.target, '__name__', node.target)!r}"


def _final_activations(root: torch.nn.Module, pool: fx.Node) -> List[fx.Node]:
    """ReLU nodes whose outputs reach the pooling through concatenations only."""
    acts: List[fx.Node] = []
    stack = [pool.args[0]]
    while stack:
        node = stack.pop()
        if not isinstance(node, fx.Node):
            continue
        if _is_relu(root, node):
            if node not in acts:
                acts.append(node)
        elif node.op == "call_function" and node.target in _CAT_FUNCTIONS:
            tensors = node.args[0] if node.args else node.kwargs["tensors"]
            stack.extend(reversed(list(tensors)))
        else:
            raise ValueError(
                "unsupported backbone: the global pooling's input comes from "
                f"{_describe(root, node)}, not from a ReLU (or a concatenation of ReLUs). "
                f"Supported: {_SUPPORTED}"
            )
    return acts


def _copy_path(src: torch.nn.Module, dst: torch.nn.Module, path: str) -> None:
    """Install ``src.<path>`` at ``dst.<path>``, creating empty parent containers."""
    *parents, leaf = path.split(".")
    for name in parents:
        nxt = getattr(dst, name, None)
        if nxt is None:
            nxt = torch.nn.Module()
            setattr(dst, name, nxt)
        dst = nxt
        src = getattr(src, name)
    if not hasattr(dst, leaf):
        setattr(dst, leaf, getattr(src, leaf))


def _graph_module(root: torch.nn.Module, graph: fx.Graph, model: torch.nn.Module) -> fx.GraphModule:
    """A GraphModule over ``graph`` that keeps every module of ``root`` (state_dict unchanged)."""
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name=f"{type(model).__name__}GL")
    have = dict(gm.named_modules())
    for name, mod in root.named_modules():
        if not name or name in have:
            continue
        if any(True for _ in mod.parameters(recurse=False)) or any(
            True for _ in mod.buffers(recurse=False)
        ):
            _copy_path(root, gm, name)
    want, got = list(model.state_dict().keys()), list(gm.state_dict().keys())
    if set(want) != set(got):
        raise RuntimeError(
            f"internal error: surgery changed state_dict keys (missing {set(want) - set(got)}, "
            f"extra {set(got) - set(want)})"
        )
    gm.train(model.training)
    return gm


def install_mixed_pooling(model: torch.nn.Module, alpha: float = DEFAULT_ALPHA) -> torch.nn.Module:
    """Replace the global average pooling of a backbone by :class:`MixedPooling` (GL++ eq. 13).

    ``f_flat = alpha * maxpool(f) + (1 - alpha) * avgpool(f)``; Table 7 alpha: 0.5 (CUB,
    default), 0.6 (Cars196, SOP), 0.9 (In-Shop).

    When the pooling is a module (ResNet ``avgpool``, GoogLeNet ``avgpool``, Inception v3
    ``avgpool``) a copy of ``model`` with that module replaced is returned (same class). When
    it is a function call (DenseNet's ``F.adaptive_avg_pool2d``) the call is rewritten in the
    fx graph and a ``GraphModule`` is returned. ``state_dict`` keys never change.

    Args:
        model: the backbone (not modified).
        alpha: weight of max pooling in [0, 1].

    Returns:
        The new model; use the return value.
    """
    _check_model(model)
    pool_module = MixedPooling(alpha)
    root, graph = _trace(model)
    pool = _find_global_pool(root, graph)
    if pool.op == "call_module":
        new = copy.deepcopy(model)
        *parents, leaf = pool.target.split(".")
        parent = new.get_submodule(".".join(parents)) if parents else new
        setattr(parent, leaf, pool_module)
        return new
    name = "global_pool"
    while hasattr(root, name):
        name = "_" + name
    root.add_module(name, pool_module)
    with graph.inserting_after(pool):
        new_node = graph.call_module(name, args=(pool.args[0],))
    pool.replace_all_uses_with(new_node)
    graph.erase_node(pool)
    return _graph_module(root, graph, model)


def check_negative_slope(negative_slope: float) -> float:
    """Validate ``negative_slope`` (a finite float >= 0) and return it as a float."""
    return check_number(
        "negative_slope", negative_slope, minimum=0.0, hint="0 = ReLU, 1 = identity"
    )


def install_leaky_relu(
    model: torch.nn.Module, negative_slope: float = DEFAULT_NEGATIVE_SLOPE
) -> fx.GraphModule:
    """Replace only the final ReLU before the global pooling by ``LeakyReLU`` (GL++ §4.3).

    Works on the fx graph: the ReLU node(s) feeding the global pooling (through concatenations
    for GoogLeNet/Inception's last block) are redirected to one new ``LeakyReLU`` submodule
    named ``final_activation``; every other use of a shared ReLU module (ResNet's Bottleneck)
    and every other ``F.relu`` call (DenseNet) is untouched. ``negative_slope=0`` reproduces
    the original outputs exactly. Table 7 slopes: 0.75 (CUB, default), 0.4 (Cars196), 1.0
    (In-Shop, SOP).

    Args:
        model: the backbone (not modified).
        negative_slope: >= 0.

    Returns:
        A ``torch.fx.GraphModule`` with the same parameters/buffers and ``state_dict`` keys; its
        graph is the eval-mode graph (no auxiliary outputs).
    """
    _check_model(model)
    negative_slope = check_negative_slope(negative_slope)
    root, graph = _trace(model)
    pool = _find_global_pool(root, graph)
    acts = _final_activations(root, pool)
    name = "final_activation"
    while hasattr(root, name):
        name = "_" + name
    root.add_module(name, torch.nn.LeakyReLU(negative_slope, inplace=False))
    for act in acts:
        src = act.args[0] if act.args else act.kwargs["input"]
        with graph.inserting_after(act):
            new_node = graph.call_module(name, args=(src,))
        act.replace_all_uses_with(new_node)
        graph.erase_node(act)
    gm = _graph_module(root, graph, model)
    gm.replaced_activations = len(acts)
    return gm
