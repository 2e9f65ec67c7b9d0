"""The GPU path (issue 12): host and device data paths agree, augmentation is drawn from the
device's generator and nothing else, compile with precise BatchNorm has no graph breaks, each
rank has its own random streams, checkpoints resume across device counts and devices.

The CPU tests run everywhere. Tests marked `cuda` need a CUDA device (`pytest -m cuda`) and are
skipped without one.
"""

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import run_study
from torch import nn

from study import distributed, engine, loader, sacred_api
from study.data import prepare
from study.errors import ConfigError, DataError
from study.experiment import RANK_SEED_STRIDE, build_setup, ex
from study.loader import BatchTransform, DeviceSplit, HostSplit
from study.registry import registry
from study.stores import read_file_store

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")
MNIST = ["model=small_cnn", "dataset=mnist", "batch_size=50", "lr=0.003"]


# --- helpers ------------------------------------------------------------------------------


def _images(n=70, size=8, channels=1, classes=3, seed=0):
    """Learnable uint8 NHWC images: the class sets the brightness, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = labels[:, None, None, None] * (180 // max(classes - 1, 1)) + 40
    noise = rng.normal(0, 30, (n, size, size, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels


def _batches(split, transform, train, seed, batch_size=16, device="cpu"):
    generator = torch.Generator(device=device).manual_seed(seed) if train else None
    out = split.batches(batch_size, transform, train=train, generator=generator)
    return [(x.clone(), y.clone()) for x, y in out]


def _bn_net(classes=3):
    """A small conv net with BatchNorm and dropout (so the global generator matters)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def _engine_setup(split_type=DeviceSplit, compile_backend=None, epochs=2):
    """A TrainingSetup on the CPU: 100 training images in batches of 32 (the last has 4)."""
    torch.manual_seed(0)
    images, labels = _images(n=140)
    train = split_type(images[:100], labels[:100], CPU)
    test = split_type(images[100:], labels[100:], CPU)
    model = _bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if compile_backend is not None:
        model = torch.compile(model, backend=compile_backend, dynamic=False)
    t = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1, augment="crop-flip")
    return engine.TrainingSetup(
        model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train=train,
        test=test, train_transform=t, test_transform=t, epochs=epochs, batch_size=32,
        num_classes=3, seed=5, precise_bn=64, progress=False,
        compiled="default" if compile_backend is not None else None,
    )  # fmt: skip


def _config(data_root, **updates) -> dict:
    """The resolved config of `study run with model=small_cnn dataset=mnist ...` (as
    benchmarks/benchmark.py's config_for gets it)."""
    run = sacred_api.create_run(
        ex,
        "print_config",
        {"model": "small_cnn", "dataset": "mnist", "data_root": str(data_root), **updates},
        [],
        {"--loglevel": "ERROR"},
    )
    return dict(run.config)


def _mnist(data_root):
    return prepare(registry().dataset("mnist"), data_root)


def _build(data_root, device, **updates):
    """build_setup as `study run` calls it, in this one process, without progress bars."""
    config = _config(data_root, **updates)
    setup, _, _ = build_setup(
        config, _mnist(data_root), torch.device(device), distributed.World(),
        registry().model("small_cnn"),
    )  # fmt: skip
    setup.progress = False
    return setup


def _same_batches(a, b):
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


# --- 1. the host data path ------------------------------------------------------------------


def test_host_split_serves_exactly_the_device_splits_batches_on_the_cpu():
    images, labels = _images(n=50, size=10, channels=3)
    t = BatchTransform(12, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), augment="crop-flip")
    device, host = DeviceSplit(images, labels, CPU), HostSplit(images, labels, CPU)
    for train in (True, False):
        expected = _batches(device, t, train, seed=11)
        _same_batches(_batches(host, t, train, seed=11), expected)
    # The seed matters (so the equality above is about order and augmentation, not luck).
    other = _batches(device, t, True, seed=12)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(other, expected, strict=True))
    assert [len(y) for _, y in expected] == [16, 16, 16, 2]


def test_fit_from_host_memory_gives_the_device_resident_result():
    _, on_device = engine.fit(_engine_setup(DeviceSplit))
    state, from_host = engine.fit(_engine_setup(HostSplit))
    assert state.epoch == 2
    assert from_host.loss == on_device.loss
    assert np.array_equal(from_host.topk_prob, on_device.topk_prob)
    assert np.array_equal(from_host.confusion, on_device.confusion)


def test_study_run_with_data_on_device_false_records_it_and_the_same_result(mnist_root, tmp_path):
    def run(setting):  # 8 px images and 100 test images keep the runs quick
        return run_study(
            "run", "with", *MNIST, f"data_root={mnist_root}", "epochs=1", "image_size=8",
            "test_limit=100", f"data_on_device={setting}", "-F", tmp_path / setting,
            cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, check=setting != "maybe",
        )  # fmt: skip

    # Sacred reads Python literals: False, True (lower-case false is the string 'false').
    # The three commands run side by side, one thread each.
    with ThreadPoolExecutor(3) as pool:
        _, _, refused = pool.map(run, ("False", "True", "maybe"))
    (from_host,) = read_file_store(tmp_path / "False")
    (on_device,) = read_file_store(tmp_path / "True")
    assert from_host.status == on_device.status == "COMPLETED"
    assert from_host.info["training"]["data_on_device"] is False
    assert on_device.info["training"]["data_on_device"] is True
    assert from_host.result == on_device.result

    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("study: error:")]
    assert len(errors) == 1 and "data_on_device='maybe' is invalid" in errors[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "maybe").exists()  # refused before anything was recorded


# --- 2. data that does not fit ---------------------------------------------------------------


def test_data_larger_than_host_memory_is_refused_in_one_line_naming_train_limit():
    host = loader.available_host_memory()
    assert host > 0
    with pytest.raises(DataError) as raised:
        loader.data_on_device("auto", 4 * host, CPU)
    message = str(raised.value)
    assert "train_limit" in message and "\n" not in message
    # What fits is held where the setting says (on the CPU both are host memory).
    assert loader.data_on_device("auto", 1000, CPU) is True
    assert loader.data_on_device(True, 1000, CPU) is True
    assert loader.data_on_device(False, 1000, CPU) is False


# --- 3. torch.compile and precise BatchNorm ---------------------------------------------------


def test_compiled_training_with_precise_bn_has_no_graph_breaks_and_trains_as_eager(monkeypatch):
    from torch._dynamo.utils import counters

    # A spy on the real epoch: how many graphs exist when each epoch starts and ends.
    graphs = []
    real_epoch = engine.train_one_epoch

    def epoch(*args, **kwargs):
        graphs.append(counters["stats"]["unique_graphs"])
        metrics = real_epoch(*args, **kwargs)
        graphs.append(counters["stats"]["unique_graphs"])
        return metrics

    monkeypatch.setattr(engine, "train_one_epoch", epoch)
    torch._dynamo.reset()
    counters.clear()
    # backend="eager": Dynamo's capture (where graph breaks and recompiles happen) without
    # Inductor, so the test is fast on 2 CPU cores.
    state, compiled = engine.fit(_engine_setup(compile_backend="eager"))
    assert state.epoch == 2
    assert not counters["graph_break"], dict(counters["graph_break"])
    # One graph per training batch shape (32, and 4 for the last batch), both compiled by the
    # warm-up before the first epoch: no compiling in the timed epochs, no recompiles later.
    # Precise BatchNorm and evaluation run on the plain module, so they add none.
    assert graphs == [2, 2, 2, 2], (graphs, dict(counters["stats"]))
    assert state.compile_seconds > 0

    # The warm-up put every buffer, gradient and random state back: training is unchanged.
    # The eager backend runs the captured ops unchanged, so the result is bit-identical.
    plain_state, plain = engine.fit(_engine_setup())
    assert plain_state.compile_seconds == 0
    assert plain.loss == compiled.loss
    assert np.array_equal(plain.topk_prob, compiled.topk_prob)


# --- 4. random streams per rank ---------------------------------------------------------------

RANK_SCRIPT = """
import json, os, sys

import torch

from study import distributed, sacred_api
from study.data import prepare
from study.experiment import build_setup, ex
from study.registry import registry

root, out = sys.argv[1], sys.argv[2]
config = dict(sacred_api.create_run(
    ex, "print_config",
    {"model": "small_cnn", "dataset": "mnist", "data_root": root, "seed": 3, "device": "cpu"},
    [], {"--loglevel": "ERROR"},
).config)
world = distributed.from_environment()
device = distributed.start(world, torch.device("cpu"))
data = prepare(registry().dataset("mnist"), root)
torch.manual_seed(12345)  # whatever came before, build_setup seeds
setup, _, _ = build_setup(config, data, device, world, registry().model("small_cnn"))
mask = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)
with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
    json.dump({
        "mask": (mask > 0).int().tolist(),
        "weights": next(setup.plain_model.parameters()).flatten()[:8].tolist(),
        "seed": setup.seed,
        "batch_size": setup.batch_size,
    }, f)
distributed.stop()
"""


def _dropout_mask():
    return (nn.functional.dropout(torch.ones(64), 0.5, training=True) > 0).int().tolist()


def test_build_setup_gives_each_rank_its_own_dropout_stream(mnist_root, tmp_path):
    _mnist(mnist_root)  # the data cache, built once before the processes read it
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(script), str(mnist_root), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # The same config in one process (rank 0 of 1), built here.
    torch.manual_seed(12345)
    single = _build(mnist_root, "cpu", seed=3)
    single_mask = _dropout_mask()
    single_weights = next(single.plain_model.parameters()).flatten()[:8].tolist()

    assert rank0["weights"] == rank1["weights"] == single_weights  # the same initial model
    assert rank0["mask"] != rank1["mask"]  # different dropout masks on the two ranks
    assert rank0["mask"] == single_mask  # rank 0 trains as one process does
    # Exactly the documented seeds: seed + RANK_SEED_STRIDE * rank.
    for rank, record in ((0, rank0), (1, rank1)):
        torch.manual_seed(3 + RANK_SEED_STRIDE * rank)
        assert record["mask"] == _dropout_mask(), rank
    # Shuffling and augmentation: one stream per rank too; the global batch is split.
    assert rank0["seed"] != rank1["seed"]
    assert rank0["batch_size"] == rank1["batch_size"] == single.batch_size // 2


# --- 5. resume across device counts ----------------------------------------------------------


def _model_and_optimizer():
    model = nn.Linear(4, 2)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def _states_after(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    return engine._rng_states(CPU)


def test_a_checkpoint_of_two_ranks_resumes_each_rank_and_seeds_new_ranks_afresh(
    tmp_path, monkeypatch
):
    rank_states = [_states_after(1), _states_after(2)]
    model, optimizer = _model_and_optimizer()
    ckpt = tmp_path / "checkpoint.pt"
    engine.save_checkpoint(ckpt, model, optimizer, engine.TrainState(epoch=3), rng=rank_states)

    def resumed_torch_state(rank):
        monkeypatch.setenv("RANK", str(rank))
        torch.manual_seed(999)  # disturb: loading must set the state
        np.random.seed(999)
        state = engine.load_checkpoint(ckpt, *_model_and_optimizer())
        assert state.epoch == 3
        return torch.get_rng_state(), np.random.get_state()[1].copy()

    # One process (rank 0 of 1) resumes rank 0's streams exactly.
    monkeypatch.delenv("RANK", raising=False)
    torch.manual_seed(999)
    engine.load_checkpoint(ckpt, *_model_and_optimizer())
    assert torch.equal(torch.get_rng_state(), rank_states[0]["torch"])
    assert np.array_equal(np.random.get_state()[1], rank_states[0]["numpy"][1].numpy())
    # Rank 1 gets its own.
    assert torch.equal(resumed_torch_state(1)[0], rank_states[1]["torch"])
    # A rank the checkpoint has no state for is seeded afresh: not rank 0's or 1's stream,
    # and the same each time it resumes.
    fresh, _ = resumed_torch_state(3)
    assert not torch.equal(fresh, rank_states[0]["torch"])
    assert not torch.equal(fresh, rank_states[1]["torch"])
    assert torch.equal(resumed_torch_state(3)[0], fresh)
    assert not torch.equal(resumed_torch_state(2)[0], fresh)


def test_a_version_1_checkpoint_still_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    model, optimizer = _model_and_optimizer()
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    states = _states_after(7)
    # Version 1 kept one dict of states, with every visible GPU's CUDA state in a list.
    states["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    payload = {
        "version": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "epoch": 2,
        "history": [{"epoch": 1}, {"epoch": 2}],
        "train_seconds": 4.5,
        "stopped_by_budget": False,
        "config": {"lr": 0.01},
        "rng": states,
    }
    ckpt = tmp_path / "v1.pt"
    torch.save(payload, ckpt)
    torch.manual_seed(999)
    fresh_model, fresh_optimizer = _model_and_optimizer()
    state = engine.load_checkpoint(ckpt, fresh_model, fresh_optimizer)
    assert (state.epoch, state.train_seconds, state.compile_seconds) == (2, 4.5, 0.0)
    assert state.config == {"lr": 0.01} and len(state.history) == 2
    assert torch.equal(torch.get_rng_state(), states["torch"])
    assert torch.equal(fresh_model.weight, model.weight)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1


# --- 6. batch_size under torchrun -------------------------------------------------------------


def test_a_batch_size_that_does_not_split_over_the_processes_is_refused(
    mnist_root, tmp_path, monkeypatch
):
    message = (
        "batch_size=50 does not split evenly over 3 processes; use a multiple of 3, e.g. 48 or 51"
    )
    proc = run_study(
        "run", "with", *MNIST, f"data_root={mnist_root}", "-F", tmp_path / "runs",
        cwd=tmp_path, env={"WORLD_SIZE": "3"}, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("study: error:")]
    assert errors == [f"study: error: {message}"], proc.stderr
    assert "Traceback" not in proc.stderr
    # The config alone (print_config's path) is checked under WORLD_SIZE without joining a
    # process group: a multiple of 3 resolves, 50 is refused with the same message.
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert _config(mnist_root, batch_size=51)["batch_size"] == 51
    with pytest.raises(ConfigError) as raised:
        _config(mnist_root, batch_size=50)
    assert str(raised.value) == message


# --- 7. augmentation drawn from the caller's device generator only ---------------------------


def test_epoch_generators_are_deterministic_and_batches_draw_nothing_global():
    a, b = engine.epoch_generator(4, 2, "cpu"), engine.epoch_generator(4, 2, "cpu")
    assert a.device == CPU
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    c = engine.epoch_generator(4, 3, "cpu")
    assert not torch.equal(torch.rand(5, generator=c), torch.rand(5, generator=b))

    images, labels = _images(n=40)
    t = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1, augment="crop-flip")
    for split in (DeviceSplit(images, labels, CPU), HostSplit(images, labels, CPU)):
        torch.manual_seed(0)
        np.random.seed(0)
        global_torch, global_numpy = torch.get_rng_state(), np.random.get_state()[1].copy()
        generator = engine.epoch_generator(4, 2, "cpu")
        before = generator.get_state()
        x = torch.cat([x for x, _ in split.batches(16, t, train=True, generator=generator)])
        assert not torch.equal(generator.get_state(), before)  # drawn from the generator...
        assert torch.equal(torch.get_rng_state(), global_torch)  # ...and from nothing else
        assert np.array_equal(np.random.get_state()[1], global_numpy)
        again = engine.epoch_generator(4, 2, "cpu")
        assert torch.equal(
            x, torch.cat([x for x, _ in split.batches(16, t, train=True, generator=again)])
        )


# --- CUDA -----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_a_cpu_generator_cannot_feed_a_cuda_split():
    images, labels = _images(n=20)
    split = DeviceSplit(images, labels, torch.device("cuda"))
    t = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1, augment="crop-flip")
    with pytest.raises(RuntimeError, match="generator"):
        next(split.batches(8, t, train=True, generator=torch.Generator().manual_seed(0)))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_cuda_bf16_channels_last_fused_step_is_sync_free(mnist_root, optimizer):
    setup = _build(mnist_root, "cuda", optimizer=optimizer, augment="crop", batch_size=50)
    assert setup.autocast_dtype == torch.bfloat16
    assert setup.optimizer.param_groups[0]["fused"] is True
    conv = next(m for m in setup.plain_model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    generator = engine.epoch_generator(setup.seed, 1, setup.device)
    t = setup.train_transform
    batches = list(setup.train.batches(setup.batch_size, t, train=True, generator=generator))
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    setup.model.train()
    # The first step may sync (cudnn autotuning, optimizer state); the others must not.
    engine.train_step(setup, *batches[0])
    torch.cuda.synchronize()
    losses = []
    try:
        torch.cuda.set_sync_debug_mode("error")
        for inputs, labels in batches[1:4]:
            loss, _ = engine.train_step(setup, inputs, labels)
            losses.append(loss.detach())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(losses) == 3 and bool(torch.isfinite(torch.stack(losses)).all())


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_an_epochs_batches_and_steps_are_sync_free(mnist_root):
    """train_one_epoch's loop: batches drawn on the device (crop-flip), steps, metrics kept on
    the device. Its one read at the end of the epoch is outside the checked region."""
    setup = _build(mnist_root, "cuda", augment="crop-flip", batch_size=50)
    setup.model.train()
    # Warm up outside the check: cudnn autotuning, optimizer state, the cached constants.
    warm = engine.epoch_generator(setup.seed, 0, setup.device)
    for inputs, labels in setup.train.batches(
        setup.batch_size, setup.train_transform, train=True, generator=warm
    ):
        engine.train_step(setup, inputs, labels)
        break
    torch.cuda.synchronize()
    generator = engine.epoch_generator(setup.seed, 1, setup.device)
    loss_sum = torch.zeros((), device=setup.device)
    correct = torch.zeros((), device=setup.device, dtype=torch.int64)
    seen = 0
    try:
        torch.cuda.set_sync_debug_mode("error")
        for inputs, labels in setup.train.batches(
            setup.batch_size, setup.train_transform, train=True, generator=generator
        ):
            loss, logits = engine.train_step(setup, inputs, labels)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert seen == len(setup.train)
    assert np.isfinite(loss_sum.item()) and 0 <= correct.item() <= seen


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_compiled_and_plain_models_train(mnist_root):
    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        setup = _build(mnist_root, "cuda", compile=compiled, batch_size=50)
        assert (setup.compiled == "default") is compiled
        generator = engine.epoch_generator(setup.seed, 1, setup.device)
        batches = setup.train.batches(
            setup.batch_size, setup.train_transform, train=True, generator=generator
        )
        setup.model.train()
        steps = [engine.train_step(setup, *next(batches))[0].item() for _ in range(2)]
        assert all(np.isfinite(steps)), steps
        losses[compiled] = steps
    # The same weights and batch: the first losses agree within bf16's precision.
    assert losses[True][0] == pytest.approx(losses[False][0], abs=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_resume_gives_the_uninterrupted_result_within_tolerance(mnist_root, tmp_path):
    updates = dict(epochs=2, batch_size=50, precise_bn=200, augment="crop")
    _, straight = engine.fit(_build(mnist_root, "cuda", **updates))

    first = _build(mnist_root, "cuda", **updates)
    first.epochs, first.checkpoint = 1, tmp_path / "checkpoint.pt"
    engine.fit(first)
    torch.manual_seed(12345)  # disturb the global generator: the checkpoint restores it
    resumed_setup = _build(mnist_root, "cuda", **updates)  # initial weights, to be replaced
    state = engine.load_checkpoint(
        first.checkpoint, resumed_setup.model, resumed_setup.optimizer, resumed_setup.scheduler
    )
    assert state.epoch == 1
    state, resumed = engine.fit(resumed_setup, state)
    assert state.epoch == 2
    # GPU kernels (cudnn autotuned convolutions, atomics) are not bit-deterministic run to
    # run: the probabilities agree within 1e-2 and at most 1 % of predictions may flip.
    np.testing.assert_allclose(resumed.topk_prob, straight.topk_prob, atol=1e-2)
    assert np.mean(resumed.predicted != straight.predicted) <= 0.01
    assert abs(resumed.top1 - straight.top1) <= 0.01


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_checkpoint_resumes_on_the_cpu(mnist_root, tmp_path):
    gpu = _build(mnist_root, "cuda", epochs=1, batch_size=50)
    gpu.checkpoint = tmp_path / "checkpoint.pt"
    engine.fit(gpu)
    cpu = _build(mnist_root, "cpu", epochs=2, batch_size=50)  # initial weights, to be replaced
    assert not cpu.optimizer.param_groups[0]["fused"]  # built for the CPU
    state = engine.load_checkpoint(gpu.checkpoint, cpu.model, cpu.optimizer, cpu.scheduler)
    assert state.epoch == 1
    trained = gpu.plain_model.state_dict()
    for name, value in cpu.plain_model.state_dict().items():
        assert value.device == CPU
        assert torch.equal(value, trained[name].cpu()), name
    metrics = engine.train_one_epoch(cpu, engine.epoch_generator(cpu.seed, 2, CPU))
    assert np.isfinite(metrics["train_loss"]) and metrics["train_images"] == len(cpu.train)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_host_split_serves_the_device_splits_batches():
    images, labels = _images(n=50, size=10, channels=3)
    t = BatchTransform(
        12, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), augment="crop-flip", channels_last=True
    )
    gpu = torch.device("cuda")
    host = HostSplit(images, labels, gpu)
    assert host.images.is_pinned()
    for train in (True, False):
        expected = _batches(DeviceSplit(images, labels, gpu), t, train, seed=11, device="cuda")
        served = _batches(host, t, train, seed=11, device="cuda")
        assert all(x.device.type == "cuda" for x, _ in served)
        _same_batches(served, expected)


@pytest.mark.cuda
@pytest.mark.skipif(
    not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices (NCCL)"
)
def test_cuda_torchrun_two_gpus_over_nccl_trains_one_recorded_run(mnist_root, tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "study", "run", "with", *MNIST, f"data_root={mnist_root}", "device=cuda",
        "epochs=1", "-F", str(tmp_path / "runs"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = read_file_store(tmp_path / "runs")
    assert rec.status == "COMPLETED"
    assert rec.info["training"]["processes"] == 2
    assert rec.evaluation()["confusion"].sum() == 200
