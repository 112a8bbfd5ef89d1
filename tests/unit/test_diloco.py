"""The DiLoCo arithmetic: outer Nesterov step, weighted average, delta checks, shard
cursors, inner training and safetensors files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from parallel_pilot.kinds.train.diloco import (
    InnerConfig,
    OuterConfig,
    average_deltas,
    batch_samples,
    check_delta,
    inner_train,
    load_safetensors,
    load_tensors_into,
    model_tensors,
    outer_step,
    save_safetensors,
    shard_stream,
)
from parallel_pilot.kinds.train.spec import TrainSpec, TrainSpecError

BATCHES_PER_EPOCH = 5


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=generator), "b": torch.randn(4, generator=generator)}


def toy_spec() -> TrainSpec:
    """A linear regression whose batches depend on (shard, seed, position) only."""

    def build_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1),
                                   torch.nn.Linear(8, 1))

    def shard_batches(shard: int, num_shards: int, batch_size: int, seed: int) -> Any:
        for position in range(BATCHES_PER_EPOCH):
            generator = torch.Generator().manual_seed(seed * 1000 + shard * 100 + position)
            x = torch.randn(batch_size, 4, generator=generator)
            yield x, x.sum(dim=1, keepdim=True)

    def compute_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    return TrainSpec(build_model=build_model, shard_batches=shard_batches,
                     compute_loss=compute_loss, evaluate=None)


def test_outer_step_matches_torch_sgd_nesterov() -> None:
    params = make_params(0)
    config = OuterConfig(lr=0.7, momentum=0.9, nesterov=True)
    reference = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    sgd = torch.optim.SGD(list(reference.values()), lr=0.7, momentum=0.9, nesterov=True)
    momentum = None
    for round_number in range(4):
        delta = make_params(100 + round_number)
        for name, parameter in reference.items():
            parameter.grad = delta[name].clone()
        sgd.step()
        params, momentum = outer_step(params, delta, momentum, config)
        for name, parameter in reference.items():
            torch.testing.assert_close(params[name], parameter.detach())


def test_outer_step_by_hand_first_two_rounds() -> None:
    theta = {"x": torch.tensor([1.0])}
    g1, g2 = {"x": torch.tensor([0.5])}, {"x": torch.tensor([0.2])}
    config = OuterConfig(lr=0.7, momentum=0.9, nesterov=True)
    theta, buf = outer_step(theta, g1, None, config)
    # buf = g1 = 0.5; update = g1 + 0.9 * buf = 0.95; theta = 1 - 0.7 * 0.95
    assert theta["x"].item() == pytest.approx(1 - 0.7 * 0.95)
    theta, buf = outer_step(theta, g2, buf, config)
    # buf = 0.9 * 0.5 + 0.2 = 0.65; update = 0.2 + 0.9 * 0.65 = 0.785
    assert buf["x"].item() == pytest.approx(0.65)
    assert theta["x"].item() == pytest.approx(1 - 0.7 * 0.95 - 0.7 * 0.785)


def test_fedavg_step_gives_the_average_of_worker_weights() -> None:
    theta = make_params(0)
    workers = [{k: v + 0.1 * (i + 1) for k, v in theta.items()} for i in range(3)]
    deltas = [{k: theta[k] - w[k] for k in theta} for w in workers]
    avg = average_deltas(deltas, [1.0, 1.0, 1.0])
    new, _ = outer_step(theta, avg, None, OuterConfig(lr=1.0, momentum=0.0, nesterov=False))
    for name in theta:
        torch.testing.assert_close(new[name], sum(w[name] for w in workers) / 3)


def test_average_is_weighted_by_samples() -> None:
    a, b = {"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([4.0, 8.0])}
    avg = average_deltas([a, b], [30, 10])
    torch.testing.assert_close(avg["x"], torch.tensor([1.75, 3.5]))
    half = average_deltas([a.copy(), {"x": b["x"].half()}], [1, 1])
    assert half["x"].dtype == torch.float32
    with pytest.raises(ValueError, match="no deltas"):
        average_deltas([], [])
    with pytest.raises(ValueError, match="positive sum"):
        average_deltas([a, b], [0, 0])
    with pytest.raises(ValueError, match="2 deltas but 1 weights"):
        average_deltas([a, b], [1])


def test_check_delta_accepts_a_sane_delta_and_names_each_problem() -> None:
    params = make_params(0)
    good = {k: 0.01 * v for k, v in params.items()}
    assert check_delta(good, params) is None
    nan = {**good, "w": good["w"].clone().index_fill_(0, torch.tensor([1]), math.nan)}
    assert "w has non-finite" in (check_delta(nan, params) or "")
    inf = {**good, "b": torch.full_like(good["b"], math.inf)}
    assert "b has non-finite" in (check_delta(inf, params) or "")
    assert "lacks 1 tensor(s), e.g. b" in (check_delta({"w": good["w"]}, params) or "")
    assert "unknown tensor(s), e.g. z" in (check_delta({**good, "z": good["b"]}, params) or "")
    assert "shape (4, 3)" in (check_delta({**good, "w": good["w"].T}, params) or "")
    huge = {k: 11 * v for k, v in params.items()}
    assert "exceeds 10 x" in (check_delta(huge, params) or "")
    assert check_delta(huge, params, max_relative_norm=12.0) is None


def test_resumed_stream_yields_the_uninterrupted_batches() -> None:
    spec = toy_spec()
    kwargs: dict[str, Any] = {"shard": 1, "num_shards": 4, "batch_size": 3, "seed": 7}
    whole = shard_stream(spec, cursor=None, **kwargs)
    expected = [next(whole) for _ in range(13)]  # crosses two epoch boundaries
    first = shard_stream(spec, cursor=None, **kwargs)
    part = [next(first) for _ in range(BATCHES_PER_EPOCH)]  # ends exactly at an epoch's end
    cursor = part[-1][1]
    assert cursor == {"epoch": 0, "batch": BATCHES_PER_EPOCH}
    second = shard_stream(spec, cursor=cursor, **kwargs)
    part += [next(second) for _ in range(3)]
    third = shard_stream(spec, cursor=part[-1][1], **kwargs)
    part += [next(third) for _ in range(5)]
    assert [c for _, c in part] == [c for _, c in expected]
    for (got, _), (want, _) in zip(part, expected, strict=True):
        torch.testing.assert_close(got[0], want[0])
    assert expected[5][1] == {"epoch": 1, "batch": 1}
    assert not torch.equal(expected[0][0][0], expected[5][0][0])  # next epoch: seed + 1


def test_empty_shard_is_an_error() -> None:
    spec = toy_spec()
    spec.shard_batches = lambda shard, num_shards, batch_size, seed: iter(())
    with pytest.raises(TrainSpecError, match="yielded no batches"):
        next(shard_stream(spec, shard=0, num_shards=1, batch_size=2, seed=0, cursor=None))


def test_inner_train_in_two_parts_equals_one_run() -> None:
    spec = toy_spec()
    config = InnerConfig(lr=1e-2)
    kwargs: dict[str, Any] = {"shard": 2, "num_shards": 4, "batch_size": 4, "seed": 3,
                              "config": config}
    whole_model = spec.build_model()
    start = model_tensors(whole_model)
    whole = inner_train(spec, whole_model, cursor=None, steps=9, **kwargs)
    assert len(whole.losses) == 9 and whole.samples == 36
    assert whole.cursor == {"epoch": 1, "batch": 4}
    end = model_tensors(whole_model)
    for name in start:
        torch.testing.assert_close(whole.delta[name], start[name] - end[name])

    split_model = spec.build_model()
    first = inner_train(spec, split_model, cursor=None, steps=4, **kwargs)
    second = inner_train(spec, split_model, cursor=first.cursor, steps=5,
                         optimizer_state=first.optimizer_state, **kwargs)
    assert first.losses + second.losses == pytest.approx(whole.losses)
    for name, value in model_tensors(split_model).items():
        torch.testing.assert_close(value, end[name])


def test_inner_train_reduces_loss_and_reports_steps() -> None:
    spec = toy_spec()
    seen: list[int] = []
    result = inner_train(spec, spec.build_model(), shard=0, num_shards=1, batch_size=16, seed=0,
                         cursor=None, steps=60, config=InnerConfig(lr=2e-2),
                         on_step=lambda step, loss: seen.append(step))
    assert seen == list(range(1, 61))
    assert sum(result.losses[-5:]) < 0.5 * sum(result.losses[:5])


def test_inner_train_stops_when_asked() -> None:
    spec = toy_spec()
    calls = iter(range(100))
    result = inner_train(spec, spec.build_model(), shard=0, num_shards=1, batch_size=2, seed=0,
                         cursor={"epoch": 2, "batch": 1}, steps=10, config=InnerConfig(),
                         should_stop=lambda: next(calls) >= 3)
    assert len(result.losses) == 3 and result.samples == 6
    assert result.cursor == {"epoch": 2, "batch": 4}


def test_non_scalar_loss_is_refused() -> None:
    spec = toy_spec()
    spec.compute_loss = lambda model, batch: model(batch[0])
    with pytest.raises(TrainSpecError, match="scalar"):
        inner_train(spec, spec.build_model(), shard=0, num_shards=1, batch_size=2, seed=0,
                    cursor=None, steps=1, config=InnerConfig())


def test_model_tensors_round_trip_with_float_buffers_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    tensors = model_tensors(model)
    assert "1.running_mean" in tensors and "1.num_batches_tracked" not in tensors
    changed = {k: v + 1 for k, v in tensors.items()}
    load_tensors_into(model, changed)
    for name, value in model_tensors(model).items():
        torch.testing.assert_close(value, changed[name])
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        load_tensors_into(model, {k: v for k, v in changed.items() if k != "0.bias"})
    with pytest.raises(ValueError, match="0.weight has shape"):
        load_tensors_into(model, {**changed, "0.weight": torch.zeros(2, 2)})


def test_fp16_safetensors_round_trip_without_pickle(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(64, 64), "b": torch.randn(64), "step": torch.tensor([3])}
    path = tmp_path / "delta.safetensors"
    written = save_safetensors(path, tensors, dtype=torch.float16, metadata={"samples": "96"})
    raw = path.read_bytes()
    assert written == len(raw)
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_len])  # safetensors: length + JSON header + bytes
    assert header["w"]["dtype"] == "F16" and header["step"]["dtype"] == "I64"
    assert header["__metadata__"] == {"samples": "96"}
    assert not raw.startswith((b"\x80", b"PK"))  # neither a pickle nor a torch.save zip
    assert written < (64 * 64 + 64) * 4 * 0.6  # fp16: about half the fp32 size
    loaded, metadata = load_safetensors(path)
    assert metadata == {"samples": "96"}
    assert loaded["w"].dtype == torch.float32 and loaded["step"].dtype == torch.int64
    torch.testing.assert_close(loaded["w"], tensors["w"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(loaded["step"], tensors["step"])


def test_batch_samples_reads_the_first_tensor() -> None:
    assert batch_samples((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_samples({"x": torch.zeros(7, 3)}) == 7
    assert batch_samples(torch.zeros(4, 9)) == 4
