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
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd
import torch
from pytorch_metric_learning import samplers, testers
from pytorch_metric_learning.utils import logging_presets

from .config import BenchmarkConfig
from .data import Splits, check_batch
from .methods import MethodSpec, build_method
from .resume import ResumableSampler, ResumableTrainer, load_state, save_state
from .trunks import build_embedder, build_trunk

#: which phase the runner is in; the protocol tests read it when a test image is loaded
PHASE = "idle"

BASE_METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI", "AMI")


def make_accuracy_calculator(recall_ks=(1, 2, 4, 8)):
    """``pml_grouploss.evaluation.RecallAtKAccuracyCalculator``: PML's P@1, MAP@R, R-precision,
    NMI, AMI plus Recall@K for every K of ``recall_ks`` (R@1 == P@1 exactly)."""
    from ..evaluation import RecallAtKAccuracyCalculator

    ks = tuple(int(k) for k in recall_ks)
    return RecallAtKAccuracyCalculator(
        recall_at=ks,
        include=BASE_METRICS + tuple(f"recall_at_{k}" for k in ks),
        k="max_bin_count",
    )


class EmbeddingKeepingTester(testers.GlobalEmbeddingSpaceTester):
    """PML's tester deletes the embeddings after ``test``; keep the last ones (the retrieval grid
    and the saved test embeddings need them without reading the test images a second time)."""

    def do_knn_and_accuracies(
        self, accuracies, embeddings_and_labels, query_split_name, reference_split_names
    ):
        self.kept_embeddings = dict(embeddings_and_labels)
        return super().do_knn_and_accuracies(
            accuracies, embeddings_and_labels, query_split_name, reference_split_names
        )


def _clean(accuracies: Dict[str, Any]) -> Dict[str, float]:
    """``{"precision_at_1_level0": x, "epoch": e}`` -> ``{"precision_at_1": x}``."""
    out = {}
    for k, v in accuracies.items():
        if k == "epoch":
            continue
        out[k.replace("_level0", "")] = float(v)
    if "recall_at_1" not in out and "precision_at_1" in out:
        out["recall_at_1"] = out["precision_at_1"]  # identical by definition
    return out


def _optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"--optimizer must be adam, adamw, radam or sgd, got {name!r}")


def read_history(path: str) -> pd.DataFrame:
    """The per-epoch rows of a run (``split`` = time / val / train), last write wins."""
    hist = pd.read_json(path, lines=True)
    return hist.drop_duplicates(["epoch", "split"], keep="last").reset_index(drop=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_one(
    cfg: BenchmarkConfig,
    spec: MethodSpec,
    seed: int,
    splits: Splits,
    run_dir: str,
    label: Optional[str] = None,
    overrides: Optional[Dict[str, Any]] = None,
    final_test: bool = True,
) -> Dict[str, Any]:
    """Train, select on validation, test once. Returns the row of ``per_seed.csv``."""
    global PHASE
    label = label or spec.name
    final_path = os.path.join(run_dir, "final.json")
    if os.path.isfile(final_path):
        with open(final_path) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    device = torch.device(cfg.device)
    seed_everything(seed)

    train_ds = splits.train
    batch_size = check_batch(
        cfg.classes_per_batch, cfg.samples_per_class, cfg.batch_size, train_ds.num_classes
    )
    method = build_method(spec, train_ds.num_classes, cfg.embedding_size, overrides, label)
    trunk, feat = build_trunk(cfg.trunk, splits.in_channels, cfg.pretrained)
    embedder = build_embedder(feat, cfg.embedding_size, cfg.embedder)
    trunk, embedder, loss = trunk.to(device), embedder.to(device), method.loss.to(device)
    lr = method.lr if method.lr is not None else cfg.lr
    optimizers = {
        "trunk_optimizer": _optimizer(cfg.optimizer, trunk.parameters(), lr, cfg.weight_decay)
    }
    if any(p.requires_grad for p in embedder.parameters()):
        optimizers["embedder_optimizer"] = _optimizer(
            cfg.optimizer, embedder.parameters(), lr, cfg.weight_decay
        )
    if method.loss_lr is not None:  # the loss owns parameters: its own optimizer and lr
        optimizers["metric_loss_optimizer"] = _optimizer(
            cfg.optimizer, loss.parameters(), method.loss_lr, cfg.weight_decay
        )
    lr_schedulers = None
    if getattr(cfg, "lr_decay_epoch", None):
        lr_schedulers = {
            k.replace("_optimizer", "_scheduler_by_epoch"): torch.optim.lr_scheduler.StepLR(
                opt, step_size=cfg.lr_decay_epoch, gamma=0.1
            )
            for k, opt in optimizers.items()
        }

    sampler = ResumableSampler(  # the same batches; remembers its place for an exact resume
        samplers.MPerClassSampler(
            train_ds.labels,
            m=cfg.samples_per_class,
            batch_size=batch_size,
            length_before_new_iter=len(train_ds),
        )
    )
    record_keeper, _, _ = logging_presets.get_record_keeper(
        os.path.join(run_dir, "logs"), os.path.join(run_dir, "tensorboard")
    )
    hooks = logging_presets.get_hook_container(
        record_keeper,
        primary_metric=cfg.primary_metric,
        log_freq=cfg.log_freq,
    )
    calc = make_accuracy_calculator(cfg.recall_ks)
    tester = EmbeddingKeepingTester(
        end_of_testing_hook=hooks.end_of_testing_hook,
        accuracy_calculator=calc,
        batch_size=cfg.eval_batch_size,
        dataloader_num_workers=0,
        data_device=device,
    )
    model_folder = os.path.join(run_dir, "models")
    eval_sets = {"val": splits.val, "train": splits.train_eval}
    hook = hooks.end_of_epoch_hook(
        tester,
        eval_sets,
        model_folder,
        test_interval=cfg.eval_every,
        patience=cfg.patience,
        splits_to_eval=[("val", ["val"]), ("train", ["train"])],
    )
    history_path = os.path.join(run_dir, "history.jsonl")
    clock = {"last": time.time()}

    def end_of_epoch(trainer):
        start_eval = time.time()
        train_seconds = start_eval - clock["last"]
        result = hook(trainer)
        clock["last"] = time.time()
        rows = [{"epoch": trainer.epoch, "split": "time", "train_seconds": train_seconds}]
        if trainer.epoch % cfg.eval_every == 0:  # the hook evaluated and checkpointed
            previous = trainer.epoch - cfg.eval_every
            save_state(trainer, model_folder, trainer.epoch, previous, result is False)
            for split, acc in tester.all_accuracies.items():
                rows.append({"epoch": trainer.epoch, "split": split, **_clean(acc)})
        with open(history_path, "a") as f:  # JSON lines: rows with different columns
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return result

    trainer = ResumableTrainer(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=batch_size,
        loss_funcs={"metric_loss": loss},
        mining_funcs={"tuple_miner": method.miner} if method.miner is not None else {},
        dataset=train_ds,
        sampler=sampler,
        iterations_per_epoch=cfg.iterations_per_epoch,
        dataloader_num_workers=0,
        lr_schedulers=lr_schedulers,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch,
    )
    start_epoch = hooks.load_latest_saved_models(trainer, model_folder, device)
    if start_epoch > 1:  # random-number and sampler state, restored when training starts
        trainer.resume_state = load_state(model_folder, start_epoch - 1)
    stopped = trainer.resume_state is not None and trainer.resume_state["stopped_early"]
    if start_epoch > 1 and os.path.exists(history_path):  # keep only history up to the checkpoint
        hist = read_history(history_path)
        with open(history_path, "w") as f:
            for r in hist[hist.epoch < start_epoch].to_dict("records"):
                f.write(json.dumps({k: v for k, v in r.items() if pd.notna(v)}) + "\n")
    PHASE = "train"
    try:
        if start_epoch <= cfg.epochs and not stopped:  # --patience ended it: resume = test
            trainer.train(start_epoch=start_epoch, num_epochs=cfg.epochs)
    finally:
        PHASE = "idle"

    hist = read_history(history_path)
    times = hist[hist.split == "time"]
    val = hist[hist.split == "val"].sort_values("epoch")
    # the checkpoint HookContainer saved as best: first epoch with the highest validation metric
    best_epoch = int(val.loc[val[cfg.primary_metric].idxmax(), "epoch"])
    row: Dict[str, Any] = {
        "method": label,
        "seed": seed,
        "fold": int(seed % cfg.num_folds),
        "best_epoch": best_epoch,
        "seconds_per_epoch": float(times.train_seconds.mean()),
        "num_train_classes": train_ds.num_classes,
        "num_val_classes": splits.val.num_classes,
        "num_test_classes": splits.test.num_classes,
        "params": json.dumps(method.params, sort_keys=True, default=str),
    }
    best_val = val[val.epoch == best_epoch].iloc[0]
    best_train = hist[(hist.split == "train") & (hist.epoch == best_epoch)].iloc[0]
    for k in ("precision_at_1", "mean_average_precision_at_r", "NMI"):
        row[f"val_{k}"] = float(best_val[k])
        row[f"train_{k}"] = float(best_train[k])
    if final_test:
        hooks.load_latest_saved_models(trainer, model_folder, device, best=True)
        PHASE = "final_test"
        try:
            tester.test(
                {"test": splits.test},
                best_epoch,
                trunk,
                embedder,
                splits_to_eval=[("test", ["test"])],
            )
        finally:
            PHASE = "idle"
        record_keeper.save_records()
        row.update(_clean(tester.all_accuracies["test"]))
        if cfg.save_embeddings:
            emb, lab = tester.kept_embeddings["test"]
            np.savez_compressed(
                os.path.join(run_dir, "test_embeddings.npz"),
                embeddings=emb.cpu().numpy().astype(np.float32),
                labels=lab.cpu().numpy().ravel(),
            )
    with open(final_path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def quiet_pml(verbose: bool) -> None:
    """PML logs every epoch at INFO; keep the console to tqdm bars unless ``verbose``."""
    logging.getLogger("PML").setLevel(logging.INFO if verbose else logging.WARNING)
