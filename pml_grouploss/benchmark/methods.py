"""The methods (loss + miner + loss-parameter learning rate) the benchmark can train.

Every method gets the same trunk, embedder, sampler, batch, trunk optimizer, epochs and seeds;
what differs is only the loss, its miner and -- for losses that own parameters (GroupLoss's
classifier, ProxyAnchor's proxies, any PML loss with a ``W``) -- the learning rate of the loss's own
``metric_loss_optimizer`` (the exploration in issue 5 and PML's docs: proxy/classifier weights
need a much larger learning rate than the trunk).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from .._validation import check_choice, check_number


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method. ``params`` are the loss's keyword arguments (the defaults of the
    papers / PML); ``loss_lr`` is the learning rate of the loss's own parameters."""

    name: str
    description: str
    build_loss: Callable[..., torch.nn.Module]
    params: Mapping[str, Any] = field(default_factory=dict)
    build_miner: Optional[Callable[..., Any]] = None
    loss_lr: Optional[float] = None
    #: search space for the equal-budget tuning (name -> list of values)
    search_space: Mapping[str, Tuple[Any, ...]] = field(default_factory=dict)


def _group_loss(num_classes: int, embedding_size: int, similarity_power: float = 1.0, **params):
    """``similarity_power`` p: the similarity ``relu(corr)^p`` (``PearsonCorrelation(power=p)``;
    a scale of W would change nothing in the replicator dynamics, a power sharpens them)."""
    from ..distances import PearsonCorrelation
    from ..losses import GroupLoss

    if similarity_power != 1.0:
        params["distance"] = PearsonCorrelation(power=similarity_power)
    return GroupLoss(num_classes=num_classes, embedding_size=embedding_size, **params)


def _gradml(num_classes: int, embedding_size: int, **params):
    from ..losses import GradMLLoss

    return GradMLLoss(**params)


def _triplet(num_classes: int, embedding_size: int, type_of_triplets: str = "", **params):
    return pml_losses.TripletMarginLoss(**params)


#: the ``type_of_triplets`` that PML's ``TripletMarginMiner`` knows (it takes any string, and
#: an unknown one silently mines every triplet)
TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


def _triplet_miner(params: Mapping[str, Any]):
    kind = params.get("type_of_triplets", "semihard")
    check_choice("type_of_triplets", kind, TRIPLET_TYPES)
    return pml_miners.TripletMarginMiner(margin=params.get("margin", 0.05), type_of_triplets=kind)


def _proxy_anchor(num_classes: int, embedding_size: int, **params):
    return pml_losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_size,
                                      **params)


LR = (5e-4, 1e-3, 2.5e-3)  # the trunk learning rate: part of every search space
GL = {"temperature": 24.0, "num_iterations": 1, "num_anchors": 2}
#: Built-in methods. Group Loss defaults: T=24 (temperature of the reference code's CUB config),
#: 1 refinement step and 2 anchors per class (GL++ Figs. 3-4 and the reference), classifier lr 1e-1
#: (issue 5 exploration). Triplet: PML defaults (margin 0.05) with semi-hard mining.
#: ProxyAnchor: the paper's margin 0.1, alpha 32, proxies at lr 1e-2.
METHODS: Dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("grouploss", "Group Loss (ECCV'20 / GL++): refined-label NLL + auxiliary CE",
               _group_loss, GL, loss_lr=0.1, search_space={
                   "temperature": (1.0, 5.0, 10.0, 24.0, 50.0), "num_iterations": (1, 2, 3),
                   "num_anchors": (1, 2, 3), "loss_lr": (0.03, 0.1, 0.3), "lr": LR}),
    MethodSpec("grouploss_ce", "ablation: GroupLoss with refined-label NLL weight 0 = plain CE "
               "on its classifier", _group_loss, {**GL, "nll_weight": 0.0}, loss_lr=0.1,
               search_space={"loss_lr": (0.03, 0.1, 0.3), "lr": LR}),
    MethodSpec("triplet", "PML TripletMarginLoss + TripletMarginMiner(semihard)", _triplet,
               {"margin": 0.05, "type_of_triplets": "semihard"}, build_miner=_triplet_miner,
               search_space={"margin": (0.02, 0.05, 0.1, 0.2),
                             "type_of_triplets": ("semihard", "all", "hard"), "lr": LR}),
    MethodSpec("proxyanchor", "PML ProxyAnchorLoss (margin 0.1, alpha 32)", _proxy_anchor,
               {"margin": 0.1, "alpha": 32.0}, loss_lr=1e-2, search_space={
                   "margin": (0.05, 0.1, 0.2), "alpha": (16.0, 32.0, 64.0),
                   "loss_lr": (3e-3, 1e-2, 3e-2), "lr": LR}),
    MethodSpec("gradml", "GradML (GradML paper eq. 10-11), pml_grouploss.losses.GradMLLoss",
               _gradml,
               {"k": 2.0, "w": 1.0},
               search_space={"k": (1.0, 2.0, 4.0), "w": (0.5, 1.0, 2.0), "lr": LR}),
)}
DEFAULT_METHODS = ("grouploss", "grouploss_ce", "triplet", "proxyanchor")


def _init_parameters(cls: type) -> set:
    """Keyword names ``cls(...)`` takes, following ``*args, **kwargs`` up the MRO (PML's
    ``CosFaceLoss``/``SubCenterArcFaceLoss`` pass ``num_classes`` on to their base)."""
    names: set = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            break
    return names


def _pml_loss_method(name: str) -> MethodSpec:
    cls = getattr(pml_losses, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, pml_losses.BaseMetricLossFunction)):
        valid = sorted(n for n in dir(pml_losses) if n.endswith("Loss") and n[0].isupper())
        raise ValueError(f"unknown loss {name!r}. Built-in methods: {', '.join(METHODS)}; or "
                         f"any PML loss class by name, e.g. {', '.join(valid[:8])}, ...")
    sig = _init_parameters(cls)

    def build(num_classes: int, embedding_size: int, **params):
        sizes = {"num_classes": num_classes, "embedding_size": embedding_size}
        return cls(**{**{k: v for k, v in sizes.items() if k in sig}, **params})

    return MethodSpec(name, f"PML {name} (PML defaults)", build, search_space={"lr": LR},
                      loss_lr=1e-2 if "num_classes" in sig else None)


def get_method(name: str) -> MethodSpec:
    """A built-in method, or any ``pytorch_metric_learning.losses`` class by name (defaults)."""
    return METHODS[name] if name in METHODS else _pml_loss_method(name)


@dataclass
class BuiltMethod:
    label: str
    loss: torch.nn.Module
    miner: Any
    loss_lr: Optional[float]
    lr: Optional[float]
    params: Dict[str, Any]


#: loss arguments the benchmark sets itself (from the data and ``embedding_size``)
SET_BY_BENCHMARK = ("num_classes", "embedding_size")


def build_method(spec: MethodSpec, num_classes: int, embedding_size: int,
                 overrides: Optional[Mapping[str, Any]] = None,
                 label: Optional[str] = None) -> BuiltMethod:
    """Instantiate loss and miner. Overrides may include ``loss_lr`` (only for a loss with
    parameters of its own) and ``lr`` (trunk lr), which must be positive numbers
    (``TypeError``/``ValueError`` naming ``METHOD.loss_lr``)."""
    overrides = dict(overrides or {})
    fixed = [k for k in SET_BY_BENCHMARK if k in overrides]
    if fixed:
        raise ValueError(f"{spec.name}.{fixed[0]} is set by the benchmark (training classes, "
                         "embedding_size), not by --set/--params-file; drop it")
    params = {**spec.params, **overrides}
    loss_lr, lr = params.pop("loss_lr", spec.loss_lr), params.pop("lr", None)
    for key in ("loss_lr", "lr"):
        if key in overrides:
            check_number(f"{spec.name}.{key}", overrides[key], minimum=0, strict_minimum=True,
                         hint=f"give a positive number, e.g. {spec.name}.{key}=0.01")
    try:
        loss = spec.build_loss(num_classes, embedding_size, **params)
        miner = spec.build_miner(params) if spec.build_miner is not None else None
    except (TypeError, ValueError, KeyError) as err:  # a wrong, missing or unknown parameter
        hint = (f"; give it as an override, e.g. --set {spec.name}.PARAM=VALUE"
                if "missing" in str(err) else "")
        raise ValueError(f"{spec.name}: {err}{hint}") from err
    has_params = any(p.requires_grad for p in loss.parameters())
    if "loss_lr" in overrides and not has_params:
        raise ValueError(f"{spec.name}.loss_lr: {spec.name}'s loss has no parameters of its own "
                         "(loss_lr is their learning rate); drop it, or set the trunk's with "
                         f"{spec.name}.lr")
    return BuiltMethod(label or spec.name, loss, miner, loss_lr if has_params else None, lr,
                       {**params, **({"loss_lr": loss_lr} if has_params else {})})


def check_trains(built: BuiltMethod, classes: int, samples: int, embedding_size: int) -> None:
    """Raise ``ValueError`` unless ``built``'s miner and loss take a labelled batch of
    ``classes`` x ``samples`` random embeddings (e.g. PML's base class, or a loss without
    labels such as ``VICRegLoss``, fails here, not after the first epoch). Global random
    states are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        emb = torch.nn.functional.normalize(torch.randn(classes * samples, embedding_size))
        labels = torch.arange(classes).repeat_interleave(samples)
        try:
            tuples = built.miner(emb, labels) if built.miner is not None else None
            built.loss(emb, labels, tuples)
        except Exception as err:  # noqa: BLE001 -- any failure: this loss cannot be trained here
            raise ValueError(f"{built.label} cannot be trained on a labelled batch "
                             f"({type(err).__name__}: {str(err) or 'not implemented'}); choose "
                             "another loss") from err
