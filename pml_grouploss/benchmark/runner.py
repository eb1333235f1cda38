"""Train and evaluate one (method, seed) through PML's trainer, tester and record-keeper hooks.

Protocol per run: train on the training classes minus validation fold ``seed % num_folds``;
every ``eval_every`` epochs evaluate the validation fold (model selection) and the training
classes (train R@1); keep the checkpoint with the best validation ``primary_metric``; at the end
load it and evaluate the unseen test classes exactly once. A run whose ``final.json`` exists is
never redone; an interrupted run resumes from its last saved checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any, Callable, Dict, Optional

import numpy as np
import pandas as pd
import torch
from pytorch_metric_learning import samplers, testers
from pytorch_metric_learning.utils import logging_presets

from ..losses import GroupLoss
from ..samplers import NearestClassSampler
from ..trainers import ClassificationWarmup
from ..trainers.resume import ResumableSampler, ResumableTrainer, load_state, save_state
from .config import BenchmarkConfig, OptimConfig
from .data import Splits
from .methods import MethodSpec, build_method
from ..trunks import build_embedder, build_trunk
from .validation import check_batch, read_json_object

BASE_METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI", "AMI")


def make_accuracy_calculator(recall_ks=(1, 2, 4, 8), metrics=BASE_METRICS, **kwargs):
    """``pml_grouploss.evaluation.RecallAtKAccuracyCalculator``: ``metrics`` (default PML's P@1,
    MAP@R, R-precision, NMI, AMI) plus Recall@K for every K of ``recall_ks`` (R@1 == P@1
    exactly); ``kwargs`` go to the calculator (e.g. a re-ranking ``knn_func``)."""
    from ..evaluation import RecallAtKAccuracyCalculator

    ks = tuple(int(k) for k in recall_ks)
    return RecallAtKAccuracyCalculator(recall_at=ks, k="max_bin_count", **kwargs,
                                       include=tuple(metrics) + tuple(f"recall_at_{k}" for k in ks))


class EmbeddingKeepingTester(testers.GlobalEmbeddingSpaceTester):
    """PML's tester deletes the embeddings after ``test``; keep the last ones (the retrieval grid
    and the saved test embeddings need them without reading the test images a second time)."""

    def do_knn_and_accuracies(self, accuracies, embeddings_and_labels, *args):
        self.kept_embeddings = dict(embeddings_and_labels)
        return super().do_knn_and_accuracies(accuracies, embeddings_and_labels, *args)


def clean_accuracies(accuracies: Dict[str, Any]) -> Dict[str, float]:
    """``{"precision_at_1_level0": x, "epoch": e}`` -> ``{"precision_at_1": x}``."""
    out = {k.replace("_level0", ""): float(v) for k, v in accuracies.items() if k != "epoch"}
    if "recall_at_1" not in out and "precision_at_1" in out:
        out["recall_at_1"] = out["precision_at_1"]  # identical by definition
    return out


#: the optimizer choices of ``BenchmarkConfig.optimizer`` and their fixed arguments
OPTIMIZERS = {"adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {}),
              "radam": (torch.optim.RAdam, {}), "sgd": (torch.optim.SGD, {"momentum": 0.9})}


def read_history(path: str) -> pd.DataFrame:
    """The per-epoch rows of a run (``split`` = time / val / train), last write wins."""
    hist = pd.read_json(path, lines=True)
    return hist.drop_duplicates(["epoch", "split"], keep="last").reset_index(drop=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizers(cfg: BenchmarkConfig, trunk, embedder, loss, method) -> Dict[str, Any]:
    """Trunk and embedder at the method's trunk lr (default ``cfg.optim.lr``); a loss that owns
    parameters gets its own optimizer at ``loss_lr``."""
    lr = method.lr if method.lr is not None else cfg.optim.lr
    cls, fixed = OPTIMIZERS[cfg.optim.optimizer]
    parts = {"trunk": (trunk, lr), "embedder": (embedder, lr),
             "metric_loss": (loss, method.loss_lr)}
    return {f"{name}_optimizer": cls(module.parameters(), lr=rate,
                                     weight_decay=cfg.optim.weight_decay, **fixed)
            for name, (module, rate) in parts.items()
            if rate is not None and any(p.requires_grad for p in module.parameters())}


def _append_history(path: str, rows) -> None:
    with open(path, "a") as f:  # JSON lines: rows with different columns
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _trim_history(path: str, start_epoch: int) -> None:
    """A resumed run keeps only the history up to its checkpoint."""
    if start_epoch > 1 and os.path.exists(path):
        hist = read_history(path)
        os.remove(path)
        _append_history(path, [{k: v for k, v in r.items() if pd.notna(v)}
                                for r in hist[hist.epoch < start_epoch].to_dict("records")])


def _schedulers(optim: OptimConfig, optimizers: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """PML's ``lr_schedulers``: x0.1 every ``lr_decay_epoch`` epochs (stepped by the trainer)
    and/or x0.1 after ``lr_plateau_patience`` epochs without a better validation metric
    (``ReduceLROnPlateau``, stepped by PML's HookContainer at each evaluation)."""
    schedulers = {}
    for key, opt in optimizers.items():
        name = key.replace("_optimizer", "_scheduler_by_")
        if optim.lr_decay_epoch:
            schedulers[name + "epoch"] = torch.optim.lr_scheduler.StepLR(
                opt, optim.lr_decay_epoch, gamma=0.1)
        if optim.lr_plateau_patience:  # reduced at the evaluation `patience` epochs after the best
            schedulers[name + "plateau"] = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=0.1,
                patience=optim.lr_plateau_patience // optim.eval_every - 1)
    return schedulers or None


def _sampler(cfg: BenchmarkConfig, train_ds, batch_size: int, seed: int) -> ResumableSampler:
    """PML's ``MPerClassSampler`` or the GL++ ``NearestClassSampler`` (its centroids refreshed
    after every epoch), wrapped to remember its place for resume."""
    m, n = cfg.model.samples_per_class, len(train_ds)
    if cfg.model.sampler == "nearest_class":
        return ResumableSampler(NearestClassSampler(train_ds.labels, m, batch_size, n, seed=seed))
    return ResumableSampler(samplers.MPerClassSampler(
        train_ds.labels, m=m, batch_size=batch_size, length_before_new_iter=n))


class _Run:
    """The PML objects of one (method, seed) run: trainer, tester, hooks, record keeper."""

    def __init__(self, cfg: BenchmarkConfig, spec: MethodSpec, splits: Splits, run_dir: str,
                 label: str, overrides: Optional[Dict[str, Any]], on_validation,
                 seed: int = 0) -> None:
        self.cfg, self.device = cfg, torch.device(cfg.run.device)
        train_ds = splits.train
        batch_size = check_batch(cfg, train_ds.num_classes)
        self.method = build_method(spec, train_ds.num_classes, cfg.model.embedding_size,
                                   overrides, label)
        trunk, feat = build_trunk(cfg.model.trunk, splits.in_channels, cfg.model.pretrained,
                                  cfg.model.trunk_width)
        embedder = build_embedder(feat, cfg.model.embedding_size, cfg.model.embedder)
        self.trunk, self.embedder = trunk.to(self.device), embedder.to(self.device)
        loss = self.method.loss.to(self.device)
        optimizers = _optimizers(cfg, self.trunk, self.embedder, loss, self.method)
        self.sampler = _sampler(cfg, train_ds, batch_size, seed)
        self.record_keeper, _, _ = logging_presets.get_record_keeper(
            os.path.join(run_dir, "logs"), os.path.join(run_dir, "tensorboard"))
        self.hooks = logging_presets.get_hook_container(
            self.record_keeper, primary_metric=cfg.optim.primary_metric, log_freq=cfg.run.log_freq)
        self.tester = EmbeddingKeepingTester(
            end_of_testing_hook=self.hooks.end_of_testing_hook,
            accuracy_calculator=make_accuracy_calculator(cfg.run.recall_ks),
            batch_size=cfg.run.eval_batch_size, dataloader_num_workers=0, data_device=self.device)
        self.model_folder = os.path.join(run_dir, "models")
        self.history = os.path.join(run_dir, "history.jsonl")
        self.epoch_hook = self.hooks.end_of_epoch_hook(
            self.tester, {"val": splits.val, "train": splits.train_eval}, self.model_folder,
            test_interval=cfg.optim.eval_every, patience=cfg.optim.patience,
            splits_to_eval=[("val", ["val"]), ("train", ["train"])])
        self.on_validation, self.clock = on_validation, time.time()
        miners = {"tuple_miner": self.method.miner} if self.method.miner is not None else {}
        self.trainer = ResumableTrainer(
            models={"trunk": self.trunk, "embedder": self.embedder}, optimizers=optimizers,
            batch_size=batch_size, loss_funcs={"metric_loss": loss}, mining_funcs=miners,
            dataset=train_ds, sampler=self.sampler,
            iterations_per_epoch=cfg.optim.iterations_per_epoch,
            dataloader_num_workers=0, lr_schedulers=_schedulers(cfg.optim, optimizers),
            end_of_iteration_hook=self.hooks.end_of_iteration_hook,
            end_of_epoch_hook=self.end_of_epoch)

    def end_of_epoch(self, trainer) -> bool:
        """PML's hook (evaluate, checkpoint, early stop), then history, resume state and the
        ``on_validation(epoch, metric)`` callback (False stops the training: pruning)."""
        start_eval = time.time()
        train_seconds = start_eval - self.clock
        if isinstance(self.sampler.sampler, NearestClassSampler):  # hard batches: new centroids
            self.sampler.sampler.end_of_epoch_hook(trainer)
        result = self.epoch_hook(trainer)
        if self.warmup is not None:
            self.warmup.set_epoch(trainer.epoch + 1)
        self.clock = time.time()
        rows = [{"epoch": trainer.epoch, "split": "time", "train_seconds": train_seconds}]
        if trainer.epoch % self.cfg.optim.eval_every == 0:  # the hook evaluated and checkpointed
            accuracies = {k: clean_accuracies(v) for k, v in self.tester.all_accuracies.items()}
            if result is not False and self.on_validation is not None:
                result = self.on_validation(trainer.epoch,
                                            accuracies["val"][self.cfg.optim.primary_metric])
            previous = trainer.epoch - self.cfg.optim.eval_every
            save_state(trainer, self.model_folder, trainer.epoch, previous, result is False)
            rows += [{"epoch": trainer.epoch, "split": k, **v} for k, v in accuracies.items()]
        _append_history(self.history, rows)
        return result

    def train(self, on_phase) -> None:
        """Train from the latest checkpoint (if any) to ``cfg.optim.epochs`` or an early stop."""
        start = self.hooks.load_latest_saved_models(self.trainer, self.model_folder, self.device)
        if start > 1:  # random-number and sampler state, restored when training starts
            self.trainer.resume_state = load_state(self.model_folder, start - 1)
            if isinstance(self.sampler.sampler, NearestClassSampler):  # states saved before
                self.sampler.sampler.set_epoch(start - 1)  # 158caba lack its pass count and
                self.sampler.sampler.end_of_epoch_hook(self.trainer)  # centroids: recomputed
        state = self.trainer.resume_state
        stopped = state is not None and state["stopped_early"]
        self.warmup = None
        if self.cfg.optim.warmup_epochs and isinstance(self.method.loss, GroupLoss):
            self.warmup = ClassificationWarmup(self.method.loss, self.cfg.optim.warmup_epochs,
                                               start_epoch=start)
        _trim_history(self.history, start)
        on_phase("train")
        try:
            if start <= self.cfg.optim.epochs and not stopped:  # an early stop: resume = test only
                self.trainer.train(start_epoch=start, num_epochs=self.cfg.optim.epochs)
        finally:
            on_phase("idle")

    def test(self, splits: Splits, best_epoch: int, run_dir: str, on_phase) -> Dict[str, float]:
        """Load the best-validation checkpoint and evaluate the test classes once."""
        self.hooks.load_latest_saved_models(self.trainer, self.model_folder, self.device, best=True)
        on_phase("final_test")
        try:
            self.tester.test({"test": splits.test}, best_epoch, self.trunk, self.embedder,
                             splits_to_eval=[("test", ["test"])])
        finally:
            on_phase("idle")
        self.record_keeper.save_records()
        if self.cfg.run.save_embeddings:
            emb, lab = self.tester.kept_embeddings["test"]
            np.savez_compressed(os.path.join(run_dir, "test_embeddings.npz"),
                                embeddings=emb.cpu().numpy().astype(np.float32),
                                labels=lab.cpu().numpy().ravel())
        return clean_accuracies(self.tester.all_accuracies["test"])


def _selection_row(run: _Run, splits: Splits, seed: int, label: str) -> Dict[str, Any]:
    """The checkpoint HookContainer saved as best (first epoch with the highest validation
    metric) and its validation and train metrics."""
    hist = read_history(run.history)
    val = hist[hist.split == "val"].sort_values("epoch")
    best_epoch = int(val.loc[val[run.cfg.optim.primary_metric].idxmax(), "epoch"])
    row: Dict[str, Any] = {
        "method": label, "seed": seed, "fold": int(seed % run.cfg.data.num_folds),
        "best_epoch": best_epoch,
        "seconds_per_epoch": float(hist[hist.split == "time"].train_seconds.mean()),
        "num_train_classes": splits.train.num_classes, "num_val_classes": splits.val.num_classes,
        "num_test_classes": splits.test.num_classes,
        "params": json.dumps(run.method.params, sort_keys=True, default=str),
    }
    best_val = val[val.epoch == best_epoch].iloc[0]
    best_train = hist[(hist.split == "train") & (hist.epoch == best_epoch)].iloc[0]
    for k in ("precision_at_1", "mean_average_precision_at_r", "NMI"):
        row[f"val_{k}"], row[f"train_{k}"] = float(best_val[k]), float(best_train[k])
    return row


def run_one(cfg: BenchmarkConfig, spec: MethodSpec, seed: int, splits: Splits, run_dir: str,
            label: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
            final_test: bool = True, on_phase: Optional[Callable[[str], None]] = None,
            on_validation: Optional[Callable[[int, float], bool]] = None) -> Dict[str, Any]:
    """Train, select on validation, test once. Returns the row of ``per_seed.csv``.

    ``on_phase(name)`` is told "train", "final_test" and "idle" as the run moves on;
    ``on_validation(epoch, metric)`` after every validation, returning False stops the training
    there (the tuner's pruning)."""
    label = label or spec.name
    final_path = os.path.join(run_dir, "final.json")
    if os.path.isfile(final_path):
        return read_json_object(final_path, f"{final_path!r} is damaged", "a JSON object (the "
                                "run's row)", "delete it: rerunning then resumes that seed from "
                                "its last checkpoint")
    os.makedirs(run_dir, exist_ok=True)
    on_phase = on_phase or (lambda _: None)
    seed_everything(seed)
    run = _Run(cfg, spec, splits, run_dir, label, overrides, on_validation, seed)
    run.train(on_phase)
    row = _selection_row(run, splits, seed, label)
    if final_test:
        row.update(run.test(splits, row["best_epoch"], run_dir, on_phase))
    with open(final_path + ".tmp", "w") as f:  # final.json is whole or absent (a kill)
        json.dump(row, f, indent=2)
    os.replace(final_path + ".tmp", final_path)
    return row


def quiet_pml(verbose: bool) -> None:
    """PML logs every epoch at INFO; keep the console to tqdm bars unless ``verbose``."""
    logging.getLogger("PML").setLevel(logging.INFO if verbose else logging.WARNING)
