"""The DiLoCo arithmetic: inner AdamW steps on a shard, and the outer step on averaged deltas.

DiLoCo (Douillard et al., 2023, arXiv 2311.08105): each worker starts a round from the
global weights theta, takes H local AdamW steps on its shard, and sends
``delta = theta_start - theta_end``. The deltas are averaged (weighted by samples) into a
pseudo-gradient, and an outer SGD step with Nesterov momentum applies it. The defaults are
OpenDiLoCo's (arXiv 2407.07852): inner lr 4e-4, outer lr 0.7, momentum 0.9.

Weights travel as safetensors (fp16 deltas, fp32 global weights and momentum), never as
pickles. This module imports torch; the coordinator never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from parallel_pilot.kinds.train.spec import TrainSpec, TrainSpecError

MAX_EMPTY_EPOCHS = 2  # consecutive epochs that yield no batch before a shard counts as empty
SEED_STRIDE_SHARD = 1_000_003  # keeps per-(shard, epoch, batch) torch seeds apart
SEED_STRIDE_EPOCH = 10_007


@dataclass
class InnerConfig:
    """The inner (per-worker) AdamW optimiser."""

    lr: float = 4e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm per step; None: no clipping


@dataclass
class OuterConfig:
    """The outer SGD step on the averaged pseudo-gradient (FedAvg: lr 1.0, momentum 0)."""

    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True


@dataclass
class InnerResult:
    """What one worker's round produced."""

    delta: dict[str, torch.Tensor]  # fp32, theta_start - theta_end (the outer "gradient")
    samples: int  # samples processed (len of each batch's first tensor)
    losses: list[float]  # one per inner step
    cursor: dict[str, int]  # {"epoch": e, "batch": b}: where this shard's stream now is
    optimizer_state: dict[str, Any] = field(default_factory=dict)  # AdamW state_dict


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's float state (parameters and float buffers) as detached fp32 CPU clones."""
    return {
        name: tensor.detach().to(device="cpu", dtype=torch.float32).clone()
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }


def load_tensors_into(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the model's float state; every float entry must be given."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    if missing or extra:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, extra {extra[:5]}")
    with torch.no_grad():
        for name, target in state.items():
            source = tensors[name]
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(
                    f"weights do not fit the model: {name} has shape {tuple(source.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            target.copy_(source.to(device=target.device, dtype=target.dtype))


def batch_samples(batch: Any) -> int:
    """The number of samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    if isinstance(batch, Mapping):
        return batch_samples(next(iter(batch.values()))) if batch else 0
    if isinstance(batch, list | tuple):
        return batch_samples(batch[0]) if batch else 0
    return 1


def shard_stream(
    spec: TrainSpec, *, shard: int, num_shards: int, batch_size: int, seed: int,
    cursor: Mapping[str, int] | None,
) -> Generator[tuple[Any, dict[str, int]], None, None]:
    """Batches of a shard from ``cursor`` on, each with the cursor just after it.

    Epoch ``e`` is ``shard_batches(shard, num_shards, batch_size, seed + e)``; resuming at
    ``{"epoch": e, "batch": b}`` re-creates that iterator and skips ``b`` batches, so a resumed
    stream yields exactly what an uninterrupted one would. Endless; raises ``TrainSpecError``
    when the shard yields nothing for ``MAX_EMPTY_EPOCHS`` epochs in a row.
    """
    epoch = int(cursor.get("epoch", 0)) if cursor else 0
    skip = int(cursor.get("batch", 0)) if cursor else 0
    empty_epochs = 0
    while True:
        position = 0
        for batch in spec.shard_batches(shard, num_shards, batch_size, seed + epoch):
            position += 1
            if position <= skip:
                continue
            empty_epochs = 0
            yield batch, {"epoch": epoch, "batch": position}
        if position == 0:
            empty_epochs += 1
            if empty_epochs >= MAX_EMPTY_EPOCHS:
                raise TrainSpecError(
                    f"shard_batches({shard}, {num_shards}, {batch_size}, ...) yielded no batches"
                )
        skip = 0
        epoch += 1


def inner_train(
    spec: TrainSpec, model: torch.nn.Module, *, shard: int, num_shards: int, batch_size: int,
    seed: int, cursor: dict[str, int] | None, steps: int, config: InnerConfig,
    optimizer_state: dict | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> InnerResult:
    """Train ``model`` (holding the round's global weights) for ``steps`` AdamW steps.

    The shard's stream resumes at ``cursor``; ``optimizer_state`` (from an earlier round on
    the same shard) resumes AdamW's moments. Each step seeds torch from (seed, shard, epoch,
    batch), so dropout and the like are deterministic. ``should_stop`` is asked before each
    step; a stopped run returns what it did so far. ``on_step(step, loss)`` counts from 1.
    """
    start = model_tensors(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
        eps=config.eps, weight_decay=config.weight_decay,
    )
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # the job's settings win over the saved ones
            group.update(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                         weight_decay=config.weight_decay)
    position = {"epoch": int((cursor or {}).get("epoch", 0)),
                "batch": int((cursor or {}).get("batch", 0))}
    losses: list[float] = []
    samples = 0
    stream = shard_stream(spec, shard=shard, num_shards=num_shards, batch_size=batch_size,
                          seed=seed, cursor=position)
    model.train()
    for step in range(1, steps + 1):
        if should_stop is not None and should_stop():
            break
        batch, after = next(stream)
        torch.manual_seed(_step_seed(seed, shard, after))
        optimizer.zero_grad(set_to_none=True)
        loss = spec.compute_loss(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TrainSpecError("compute_loss must return a scalar torch.Tensor")
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        losses.append(value)
        samples += batch_samples(batch)
        position = after
        if on_step is not None:
            on_step(step, value)
    stream.close()
    end = model_tensors(model)
    delta = {name: start[name] - end[name] for name in start}
    return InnerResult(delta=delta, samples=samples, losses=losses, cursor=dict(position),
                       optimizer_state=optimizer.state_dict())


def _step_seed(seed: int, shard: int, cursor: Mapping[str, int]) -> int:
    mixed = (seed * SEED_STRIDE_SHARD + shard) * SEED_STRIDE_EPOCH + cursor["epoch"]
    return (mixed * SEED_STRIDE_EPOCH + cursor["batch"]) % (2**63)


def check_delta(
    delta: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], *,
    max_relative_norm: float = 10.0,
) -> str | None:
    """Why ``delta`` must be rejected, or None when it may be averaged.

    Rejects missing, extra or mis-shaped tensors, non-finite values, and a delta whose
    global norm exceeds ``max_relative_norm`` times the weights' global norm.
    """
    missing = sorted(set(params) - set(delta))
    if missing:
        return f"delta lacks {len(missing)} tensor(s), e.g. {missing[0]}"
    extra = sorted(set(delta) - set(params))
    if extra:
        return f"delta has {len(extra)} unknown tensor(s), e.g. {extra[0]}"
    delta_sq = 0.0
    params_sq = 0.0
    for name, weights in params.items():
        change = delta[name]
        if tuple(change.shape) != tuple(weights.shape):
            return (f"delta {name} has shape {tuple(change.shape)}, "
                    f"the weights have {tuple(weights.shape)}")
        change32 = change.detach().to(torch.float32)
        if not bool(torch.isfinite(change32).all()):
            return f"delta {name} has non-finite values"
        delta_sq += float(change32.pow(2).sum())
        params_sq += float(weights.detach().to(torch.float32).pow(2).sum())
    delta_norm, params_norm = math.sqrt(delta_sq), math.sqrt(params_sq)
    if not math.isfinite(delta_norm) or delta_norm > max_relative_norm * params_norm:
        return (f"delta norm {delta_norm:.4g} exceeds {max_relative_norm:g} x "
                f"the weights' norm {params_norm:.4g}")
    return None


def average_deltas(
    deltas: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
) -> dict[str, torch.Tensor]:
    """The weighted mean of ``deltas`` in fp32 (weights: samples each worker processed)."""
    if not deltas:
        raise ValueError("no deltas to average")
    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} deltas but {len(weights)} weights")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    average: dict[str, torch.Tensor] = {}
    for name in deltas[0]:
        acc = torch.zeros_like(deltas[0][name], dtype=torch.float32)
        for delta, weight in zip(deltas, weights, strict=True):
            acc.add_(delta[name].to(torch.float32), alpha=weight / total)
        average[name] = acc
    return average


def outer_step(
    params: Mapping[str, torch.Tensor], avg_delta: Mapping[str, torch.Tensor],
    momentum: Mapping[str, torch.Tensor] | None, config: OuterConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One SGD step on the pseudo-gradient ``avg_delta``: returns (new_params, new_momentum).

    Matches ``torch.optim.SGD(lr, momentum, nesterov)`` with no dampening: the momentum
    buffer starts as the first gradient, then ``buf = momentum * buf + g``; the update is
    ``g + momentum * buf`` with Nesterov, else ``buf``. With momentum 0 it is plain SGD
    (FedAvg at lr 1.0: the new weights are the average of the workers' weights).
    """
    new_params: dict[str, torch.Tensor] = {}
    new_momentum: dict[str, torch.Tensor] = {}
    for name, weights in params.items():
        grad = avg_delta[name].to(torch.float32)
        previous = momentum.get(name) if momentum is not None else None
        if config.momentum == 0:
            update = grad
            buffer = grad.clone()
        else:
            if previous is None:
                buffer = grad.clone()
            else:
                buffer = previous.to(torch.float32) * config.momentum + grad
            update = grad + config.momentum * buffer if config.nesterov else buffer
        new_params[name] = weights.to(torch.float32) - config.lr * update
        new_momentum[name] = buffer
    return new_params, new_momentum


def save_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write ``tensors`` (float ones cast to ``dtype`` when given) to ``path``; bytes written."""
    prepared = {}
    for name, tensor in tensors.items():
        value = tensor.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        prepared[name] = value.contiguous()
    path = Path(path)
    save_file(prepared, str(path), metadata=metadata)
    return path.stat().st_size


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors with floats as fp32, its metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
            value = handle.get_tensor(name)
            tensors[name] = value.to(torch.float32) if value.is_floating_point() else value
    return tensors, metadata
