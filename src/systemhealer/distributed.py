"""Training on several processes: DistributedDataParallel on the gloo backend (CPU), via torchrun.

``systemhealer train PATH --nproc N`` runs ``torchrun --standalone --nproc-per-node N -m
systemhealer.distributed PATH``. Rank 0 runs the ordinary training flow (validation, MLflow,
registry, gate: everything is logged from rank 0 only); when the flow reaches
:func:`systemhealer.training.train_network`, it hands over to :func:`train_network_ddp`, and
the other ranks, which waited for it, join in. Rank 0 owns the data: it broadcasts the
network inputs of each epoch and the batch order, so the other ranks need neither the file nor
the tracking store (on several machines they only need the same SystemHealer install).

Each global batch of ``batch_size`` rows (the single-process batch) is split across the ranks;
each rank's loss is its share of the batch's weighted mean, so the all-reduced gradient is the
single-process gradient of that batch, and the logged metrics are the same as in a
single-process run. Validation, early stopping and the best weights are decided on rank 0 and
broadcast. Dropout masks differ (each rank draws its own), so runs are alike, not bit-equal.
The loop mirrors ``train_network``'s: a change to its optimisation belongs here too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from systemhealer.config import FAULT_CLASSES, TrainingSettings
from systemhealer.errors import SystemHealerError, TrainingError
from systemhealer.evaluation import macro_f1
from systemhealer.model import FaultMLP
from systemhealer.streaming import check_source_file
from systemhealer.training import (
    EpochCallback,
    InputSampler,
    TrainingResult,
    class_weights,
    early_stopping,
    learning_rate_schedule,
    seed_everything,
)

_TRAIN, _STOP = "train", "stop"
# Followers wait for rank 0 while it validates and prepares the data, and at the end while it
# evaluates and registers the model.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def is_distributed() -> bool:
    """True inside a process group of more than one process (under torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _broadcast_object(value: Any = None) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_array(array: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor:
    """Rank 0's 1-D or 2-D array as a tensor on every rank (its shape first, then the data)."""
    shape = torch.zeros(3, dtype=torch.int64)  # ndim, rows, columns
    if dist.get_rank() == 0:
        assert array is not None
        shape = torch.tensor([array.ndim, len(array), array.shape[-1] if array.ndim > 1 else 1])
    dist.broadcast(shape, src=0)
    ndim, rows, columns = shape.tolist()
    size = (rows,) if ndim == 1 else (rows, columns)
    if dist.get_rank() == 0:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype).reshape(size)
    else:
        tensor = torch.empty(size, dtype=dtype)
    dist.broadcast(tensor, src=0)
    return tensor


def train_network_ddp(
    x_train: np.ndarray | InputSampler | None,
    y_train: np.ndarray | None,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    settings: TrainingSettings | None,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
    targets: np.ndarray | None = None,
) -> TrainingResult:
    """``train_network`` across the process group. Rank 0 passes the data; the other ranks
    pass None (see :func:`follow`) and get everything from rank 0."""
    started = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        _broadcast_object(_TRAIN)
    settings = _broadcast_object(settings)
    assert settings is not None
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    n_inputs = _broadcast_object(x_val.shape[1] if x_val is not None else None)
    labels = _broadcast_array(y_train, torch.int64)
    soft = _broadcast_object(targets is not None if rank == 0 else None)
    loss_targets = _broadcast_array(targets, torch.float32) if soft else labels
    rng = seed_everything(settings.seed)
    sample = None
    if rank == 0:
        sample = x_train if callable(x_train) else (lambda _rng: x_train)
    network = FaultMLP(n_inputs, settings.hidden_sizes, len(FAULT_CLASSES), settings.dropout)
    model = DistributedDataParallel(network)
    torch.manual_seed(settings.seed + rank)  # each rank draws its own dropout masks
    weights = class_weights(labels.numpy()) if settings.class_weighted else None
    shard_loss = nn.CrossEntropyLoss(
        weight=weights, label_smoothing=settings.label_smoothing, reduction="sum"
    )
    eval_loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = learning_rate_schedule(optimiser, settings, len(labels))
    result = TrainingResult(network=network)
    best_score, best_state, stale = -1.0, copy.deepcopy(network.state_dict()), 0
    if rank == 0:
        xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val.astype(np.int64))  # type: ignore[arg-type, union-attr]
    bar = tqdm(
        range(1, settings.max_epochs + 1),
        desc=f"training ({world} processes)",
        unit="epoch",
        disable=not show_progress or rank != 0,
    )
    for epoch in bar:
        model.train()
        inputs = sample(rng) if sample is not None else None
        xt = _broadcast_array(inputs, torch.float32)
        order = _broadcast_array(
            rng.permutation(len(inputs)) if inputs is not None else None, torch.int64
        )
        total = torch.zeros(1, dtype=torch.float64)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2 * world:
                continue
            shard = batch[rank::world]
            # This rank's share of the batch's weighted mean: the all-reduce (a mean over
            # ranks) then gives the single-process gradient of the whole batch.
            # (with probability targets torch's mean divides by the batch size, weights or not)
            weighted = weights is not None and not soft
            denominator = weights[labels[batch]].sum() if weighted else len(batch)
            optimiser.zero_grad()
            shard_sum = shard_loss(model(xt[shard]), loss_targets[shard])
            (shard_sum / denominator * world).backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            total += float(shard_sum.detach() / denominator) * len(batch)
        dist.all_reduce(total)
        status = torch.zeros(4, dtype=torch.float64)  # val_loss, val_f1, stop, diverged
        if rank == 0:
            network.eval()
            with torch.inference_mode():
                logits = network(xv)
                status[0] = float(eval_loss_fn(logits, yv))
                status[1] = macro_f1(y_val, logits.argmax(1).numpy())  # type: ignore[arg-type]
            status[3] = float(not np.isfinite(float(total)))
            if not early_stopping(settings):
                result.best_epoch = epoch
            elif status[1] > best_score + 1e-4:
                best_score, best_state, stale, result.best_epoch = (
                    float(status[1]),
                    copy.deepcopy(network.state_dict()),
                    0,
                    epoch,
                )
            else:
                stale += 1
            status[2] = float(stale >= settings.patience)
        dist.broadcast(status, src=0)
        if status[3]:
            raise TrainingError("training diverged (loss is not finite); lower the learning rate")
        record = {
            "epoch": epoch,
            "train_loss": float(total) / len(order),
            "val_loss": float(status[0]),
            "val_macro_f1": float(status[1]),
        }
        result.history.append(record)
        if rank == 0 and on_epoch:
            on_epoch(record)
        bar.set_postfix(
            loss=f"{record['train_loss']:.3f}",
            val_loss=f"{record['val_loss']:.3f}",
            f1=f"{record['val_macro_f1']:.3f}",
        )
        if status[2]:
            break
    bar.close()
    # Drop the DDP wrapper (and its communication hooks) before the process group goes away.
    del model
    gc.collect()
    if early_stopping(settings):
        network.load_state_dict(best_state)
    network.eval()
    result.seconds = time.perf_counter() - started
    return result


def follow() -> int:
    """What ranks other than 0 do: train whenever rank 0 trains, until it says stop."""
    trainings = 0
    while _broadcast_object() == _TRAIN:
        # A diverged training raises on every rank; rank 0 reports it and says stop.
        with contextlib.suppress(TrainingError):
            train_network_ddp(None, None, None, None, None, show_progress=False)
        trainings += 1
    return trainings


def _write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point of each process started by torchrun."""
    parser = argparse.ArgumentParser(prog="python -m systemhealer.distributed")
    parser.add_argument("path", help="labelled CSV or Parquet file (read on rank 0 only)")
    parser.add_argument("--config", default=None, help="YAML config file")
    parser.add_argument("--summary-file", type=Path, default=None, help="rank 0 writes JSON here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    rank = dist.get_rank()
    failure: BaseException | None = None
    try:
        if rank == 0:
            from systemhealer.config import load_settings
            from systemhealer.orchestration import prepare_prefect, quiet_prefect_console

            prepare_prefect(load_settings(args.config))
            from flows.training import training_flow

            quiet_prefect_console()
            try:
                outcome = training_flow(args.path, args.config, show_progress=not args.no_progress)
            finally:
                _broadcast_object(_STOP)  # the others leave their loop, success or not
            _write(args.summary_file, {"outcome": outcome, "world_size": dist.get_world_size()})
        else:
            follow()
    except BaseException as exc:
        failure = exc
        if rank == 0:
            code = exc.exit_code if isinstance(exc, SystemHealerError) else 70
            _write(args.summary_file, {"error": str(exc), "exit_code": code})
    # Leave together and tear the group down explicitly: without this, gloo aborts about one
    # run in ten at exit ("terminate called without an active exception").
    gc.collect()
    dist.monitored_barrier(timeout=timedelta(seconds=120))
    dist.destroy_process_group()
    if isinstance(failure, SystemHealerError):
        print(f"error: {failure}", file=sys.stderr)
        return failure.exit_code
    if failure is not None:
        raise failure
    return 0


def launch(
    path: Path | str, config: Path | str | None, nproc: int, show_progress: bool = True
) -> dict[str, Any]:
    """Run the training flow on ``nproc`` local processes through torchrun; rank 0's outcome."""
    check_source_file(Path(path))  # before starting processes that would all wait for it
    with tempfile.TemporaryDirectory(prefix="systemhealer-ddp-") as tmp:
        summary = Path(tmp) / "summary.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "systemhealer.distributed", str(path),
            "--summary-file", str(summary),
        ]  # fmt: skip
        if config:
            command += ["--config", str(config)]
        if not show_progress:
            command.append("--no-progress")
        # One intra-op thread per process unless told otherwise (torchrun would say so loudly).
        env = {"OMP_NUM_THREADS": "1", **os.environ}
        finished = subprocess.run(command, env=env, check=False)
        payload = json.loads(summary.read_text()) if summary.exists() else {}
    if "outcome" in payload and finished.returncode == 0:
        return payload["outcome"]
    if "error" in payload:
        error = SystemHealerError(payload["error"])
        error.exit_code = int(payload.get("exit_code", 1))
        raise error
    raise TrainingError(
        f"distributed training failed (torchrun exit code {finished.returncode}); "
        "see the messages above"
    )


if __name__ == "__main__":
    sys.exit(main())
