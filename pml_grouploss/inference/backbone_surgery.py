"""Backbone surgery for Group Loss++ inference: mixed pooling (§4.2) and leaky-ReLU (§4.3).

Both functions find the *global pooling* of a backbone in its ``torch.fx`` graph, which makes
them independent of how the backbone is written: torchvision's ResNet pools with the module
``avgpool``, DenseNet calls ``F.adaptive_avg_pool2d`` inside ``forward``, GoogLeNet and
Inception v3 pool the concatenation of the branches of their last inception block.

The final activation is found by walking back from the pooling's input through concatenations.
It is replaced *as a graph node*, never by module name: torchvision's ``Bottleneck`` calls the
same ``relu`` module three times, and DenseNet applies ``F.relu`` in ``forward``; both are
handled by rewriting only the node that feeds the pooling.

Only the backbone's *final* pooling qualifies: one whose output reaches the model's output through
shape-only ops (flatten/view/reshape/squeeze) and an optional head of one-input layers; a
pooling used as a gate (squeeze-excitation) is never touched, and a model without such a pooling
raises. Traced models are returned as ``torch.fx.GraphModule``s whose graph is traced in eval mode
(auxiliary heads of GoogLeNet/Inception are not called by the graph but are kept, so the
``state_dict`` keys and values are unchanged and checkpoints load both ways); every submodule
keeps its own train/eval flag (e.g. frozen BatchNorm layers of a model in train mode). Inputs are
never modified in place.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

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
_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d)
# Between the final pooling and the model's output: shape-only ops and a head of one-input
# layers (an SE gate's pooled vector is multiplied back into a feature map: a two-input op).
_AFTER_POOL_METHODS = ("flatten", "view", "reshape", "squeeze", "contiguous")
_AFTER_POOL_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze, F.dropout, torch.dropout,
                         F.normalize) + _RELU_FUNCTIONS
_AFTER_POOL_MODULES = (
    torch.nn.Flatten, torch.nn.Identity, torch.nn.Linear, torch.nn.modules.dropout._DropoutNd,
    torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU, torch.nn.BatchNorm1d, torch.nn.LayerNorm,
)
_AFTER_POOL = ("flatten/view/reshape/squeeze and an optional head of Linear, Dropout, ReLU, "
               "GELU, BatchNorm1d, LayerNorm or F.normalize")


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


def _spatial_mean_keepdim(node: fx.Node) -> Optional[bool]:
    """``keepdim`` of a global average pooling written as a mean over H, W (``x.mean((2, 3))``,
    ``torch.mean(x, dim=[-2, -1], keepdim=True)``, as timm-style heads do), else ``None``."""
    if not ((node.op == "call_method" and node.target == "mean")
            or (node.op == "call_function" and node.target is torch.mean)):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not (isinstance(dim, (tuple, list)) and len(dim) == 2 and set(dim) in ({2, 3}, {-2, -1})
            and isinstance(keepdim, bool)):
        return None
    return keepdim


def _is_global_pool(root: torch.nn.Module, node: fx.Node) -> bool:
    """``node`` pools ``(N, C, H, W) -> (N, C, 1, 1)`` (average or :class:`MixedPooling`), or to
    ``(N, C)`` (a mean over H, W)."""
    if _spatial_mean_keepdim(node) is not None:
        return True
    if node.op == "call_module":
        mod = root.get_submodule(node.target)
        return isinstance(mod, MixedPooling) or (
            isinstance(mod, torch.nn.AdaptiveAvgPool2d) and _is_global_size(mod.output_size)
        )
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return _is_global_size(size)
    return False


def _is_after_pool_op(root: torch.nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), _AFTER_POOL_MODULES)
    if node.op == "call_method":
        return node.target in _AFTER_POOL_METHODS
    return node.op == "call_function" and node.target in _AFTER_POOL_FUNCTIONS


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.dim()``, ``x.shape``: an int for a ``view``, not a data path."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr and node.args[1:2] in (
        ("shape",), ("ndim",)
    )


def _not_final_reason(root: torch.nn.Module, pool: fx.Node) -> Optional[str]:
    """``None`` if every use of ``pool`` reaches the graph's output through :data:`_AFTER_POOL`
    ops only (the backbone's final pooling); otherwise why not."""
    reached, stack, seen = False, [pool], {pool}
    while stack:
        for user in stack.pop().users:
            if user.op == "output":
                reached = True
            elif _is_after_pool_op(root, user):
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
            elif not _is_shape_query(user):
                return f"its output goes into {_describe(root, user)}"
    return None if reached else "its output does not reach the model's output"


def _find_global_pool(root: torch.nn.Module, graph: fx.Graph) -> fx.Node:
    """The backbone's final global pooling node (``(N, C, H, W) -> (N, C, 1, 1)``): the one whose
    output reaches the graph's output through :data:`_AFTER_POOL` ops only."""
    found = [node for node in graph.nodes if _is_global_pool(root, node)]
    if not found:
        raise ValueError(
            "unsupported backbone: no global pooling (AdaptiveAvgPool2d((1, 1)), "
            "F.adaptive_avg_pool2d(x, 1), x.mean((2, 3)) or MixedPooling) found in its graph. "
            f"Supported: {_SUPPORTED}"
        )
    final, why = [], []
    for node in found:
        reason = _not_final_reason(root, node)
        if reason is None:
            final.append(node)
        else:
            why.append(f"{_describe(root, node)}: {reason}")
    if len(final) == 1:
        return final[0]
    if final:
        raise ValueError(
            f"unsupported backbone: {len(final)} global poolings feed the model's output "
            f"({', '.join(_describe(root, n) for n in final)}); the surgery needs exactly one. "
            f"Supported: {_SUPPORTED}"
        )
    raise ValueError(
        "unsupported backbone: none of its global poolings is the backbone's final pooling "
        f"(one whose output reaches the model's output through {_AFTER_POOL} only): "
        f"{'; '.join(why)} (e.g. a squeeze-excitation gate). Pool the last feature map with "
        "nn.AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1) or x.mean((2, 3)). "
        f"Supported: {_SUPPORTED}"
    )


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
        elif node.op == "call_module" and isinstance(
            root.get_submodule(node.target), torch.nn.LeakyReLU
        ):
            slope = root.get_submodule(node.target).negative_slope
            raise ValueError(
                f"install_leaky_relu: the final activation is already a LeakyReLU "
                f"({_describe(root, node)}, negative_slope={slope}); to change the slope set "
                f"model.{node.target}.negative_slope, or start from the original model"
            )
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


def _restore_training(new: torch.nn.Module, model: torch.nn.Module) -> None:
    """Give each submodule of ``new`` the train/eval flag of the submodule of ``model`` with the
    same qualified name; a module ``model`` lacks (the installed one) gets the root's flag."""
    flags: Dict[str, bool] = {
        name: m.training for name, m in model.named_modules(remove_duplicate=False)
    }
    for name, mod in new.named_modules(remove_duplicate=False):
        mod.training = flags.get(name, model.training)


def _graph_module(root: torch.nn.Module, graph: fx.Graph, model: torch.nn.Module) -> fx.GraphModule:
    """A GraphModule over ``graph`` that keeps every module of ``root`` (state_dict unchanged)
    and each submodule's train/eval flag of ``model``."""
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
    _restore_training(gm, model)
    return gm


def install_mixed_pooling(model: torch.nn.Module, alpha: float = DEFAULT_ALPHA) -> torch.nn.Module:
    """Replace the global average pooling of a backbone by :class:`MixedPooling` (GL++ eq. 13).

    ``f_flat = alpha * maxpool(f) + (1 - alpha) * avgpool(f)``; Table 7 alpha: 0.5 (CUB,
    default), 0.6 (Cars196, SOP), 0.9 (In-Shop).

    When the pooling is a module called once (ResNet ``avgpool``, GoogLeNet ``avgpool``,
    Inception v3 ``avgpool``) a copy of ``model`` with that module replaced is returned (same
    class). When it is a function call (DenseNet's ``F.adaptive_avg_pool2d``, a mean over H, W
    such as ``x.mean((2, 3))``, then flattened as the mean was) or a module also called
    elsewhere, the call is rewritten in the fx graph and a ``GraphModule`` is returned.
    ``state_dict`` keys and every submodule's train/eval flag never change. On a model that
    already has a ``MixedPooling`` as its final pooling, that pooling is replaced by one with
    the new ``alpha`` (running it twice equals running it once with the second ``alpha``).

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
        old = root.get_submodule(pool.target)
        calls = [n for n in graph.nodes if n.op == "call_module"
                 and root.get_submodule(n.target) is old]
        if len(calls) == 1:
            new = copy.deepcopy(model)
            *parents, leaf = pool.target.split(".")
            parent = new.get_submodule(".".join(parents)) if parents else new
            setattr(parent, leaf, pool_module)
            _restore_training(new, model)
            return new
    name = "global_pool"
    while hasattr(root, name):
        name = "_" + name
    root.add_module(name, pool_module)
    with graph.inserting_after(pool):
        new_node = graph.call_module(name, args=(pool.args[0],))
    if _spatial_mean_keepdim(pool) is False:  # x.mean((2, 3)) gave (N, C), the pooling (N, C, 1, 1)
        with graph.inserting_after(new_node):
            new_node = graph.call_method("flatten", args=(new_node, 1))
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
    (In-Shop, SOP). A model whose final activation is already a ``LeakyReLU`` (e.g. this
    function's output) raises ``ValueError``: set its ``negative_slope`` instead.

    Args:
        model: the backbone (not modified).
        negative_slope: >= 0.

    Returns:
        A ``torch.fx.GraphModule`` with the same parameters/buffers, ``state_dict`` keys and
        submodule train/eval flags; its graph is the eval-mode graph (no auxiliary outputs).
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
