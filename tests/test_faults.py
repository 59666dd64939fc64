"""Faults a run survives: a damaged checkpoint, SIGTERM, a second process on the same folder,
a full disk (docs/errors.md, "Crash and resume").

Tiny class UNet (8x8), a few steps; the subprocess tests pace each step so the signal can
land mid-run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearn_fast.config import TrainConfig
from unlearn_fast.training import (CheckpointWriteError, NoValidCheckpointError, OutputInUseError, list_checkpoints,
                                   train, verify_checkpoint)
from unlearn_fast.training.lock import LOCK_FILE

from helpers import ROOT, assert_same_weights, subprocess_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = dict(max_steps=6, checkpoint_every=2, keep_checkpoints=3, lr=1e-3, lr_scheduler="cosine",
              lr_warmup_steps=1, seed=5, log_every=1)


def tiny(class_dir, out, **kw) -> TrainConfig:
    values = dict(method="ru", forget=["3"], retain=["1", "7"], model_path=class_dir, batch_size=6,
                  output_dir=str(out), progress=False, method_kwargs={"bound": 0.05}, **COMMON)
    values.update(kw)
    return TrainConfig(**values)


def final_weights(out) -> dict:
    return load_file(str(Path(out) / "final" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def straight(class_dir, tmp_path_factory):
    """The uninterrupted run every interrupted one must match bit for bit."""
    out = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (a module fixture runs before the function-scoped one_thread)
    try:
        train(tiny(class_dir, out))
    finally:
        torch.set_num_threads(threads)
    return final_weights(out)


# --- 1. a damaged latest checkpoint -----------------------------------------------------------------


def test_damaged_latest_checkpoint_is_skipped_and_the_resume_is_bit_identical(class_dir, tmp_path, straight):
    import shutil

    out = tmp_path / "run"
    train(tiny(class_dir, out))
    shutil.rmtree(out / "checkpoint-00000006")  # as if the run had died after step 4's checkpoint
    shutil.rmtree(out / "final")
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    weights = out / "checkpoint-00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated copy
    assert "has" in verify_checkpoint(out / "checkpoint-00000004")
    with pytest.warns(UserWarning, match=r"skipping the damaged checkpoint .*checkpoint-00000004: .*model\.safetensors"):
        result = train(tiny(class_dir, out, resume="latest"))
    assert result.resumed_from.endswith("checkpoint-00000002") and result.step == 6
    assert_same_weights(final_weights(out), straight)


def test_a_changed_byte_is_caught_and_no_intact_checkpoint_is_a_clear_error(class_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny(class_dir, out, max_steps=2))
    opt = out / "checkpoint-00000002" / "optimizer.pt"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    opt.write_bytes(bytes(data))
    assert "does not match its sha256" in verify_checkpoint(out / "checkpoint-00000002")
    with pytest.warns(UserWarning), pytest.raises(NoValidCheckpointError, match=r"^resume: no intact checkpoint in"):
        train(tiny(class_dir, out, resume="latest"))
    with pytest.raises(ValueError, match=r"^resume: '.*checkpoint-00000002' is damaged: .*optimizer\.pt"):
        train(tiny(class_dir, out, resume=str(out / "checkpoint-00000002")))


def test_pruning_never_deletes_the_newest_valid_checkpoint(class_dir, tmp_path):
    from unlearn_fast.training.checkpoints import _prune

    out = tmp_path / "run"
    train(tiny(class_dir, out, keep_checkpoints=0))
    for step in (4, 6):  # the two newest are damaged
        f = out / f"checkpoint-{step:08d}" / "lr_scheduler.pt"
        f.write_bytes(f.read_bytes()[:10])
    _prune(out, keep=1)
    assert [s for s, _ in list_checkpoints(out)] == [2, 6]  # 4 deleted, 2 (the newest valid) kept


# --- 2. SIGTERM --------------------------------------------------------------------------------------

PACED_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
import unlearn_fast.training.data as data
from unlearn_fast.cli import main
real_sample = data.SampleSource.sample
def paced_sample(self, generator):  # each step takes >= 0.15 s, so the signal lands mid-run
    time.sleep(0.15)
    return real_sample(self, generator)
data.SampleSource.sample = paced_sample
sys.exit(main({argv}))
"""


def _cli_argv(class_dir, out, **extra) -> list[str]:
    argv = ["train", "--model-path", class_dir, "--method", "ru", "--forget", "3", "--retain", "1,7",
            "--batch-size", "6", "--output-dir", str(out), "--no-progress", "--method-kwarg", "bound=0.05",
            "--max-steps", "6", "--checkpoint-every", "2", "--keep-checkpoints", "3", "--lr", "1e-3",
            "--lr-scheduler", "cosine", "--lr-warmup-steps", "1", "--seed", "5", "--log-every", "1"]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def _start(class_dir, out, **extra) -> subprocess.Popen:
    script = PACED_SCRIPT.format(argv=repr(_cli_argv(class_dir, out, **extra)))
    return subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(proc, metrics: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.005)


def test_sigterm_at_a_random_step_checkpoints_then_resume_is_bit_identical(class_dir, tmp_path, straight):
    seed = int(os.environ.get("UNLEARN_FAST_KILL_SEED", "0"))
    rng = random.Random(seed)
    after, delay = rng.randint(1, 4), rng.uniform(0.0, 0.15)
    out = tmp_path / "run"
    proc = _start(class_dir, out)
    try:
        _wait_for_steps(proc, out / "metrics.jsonl", after)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, f"seed {seed}: rc {proc.returncode}: {err[-3000:]}"
    lines = [line for line in err.strip().splitlines() if "it/s]" not in line]
    assert "stopped by SIGTERM after step" in lines[-1] and "--resume latest" in lines[-1], lines[-1]
    stopped = int(lines[-1].split("after step ")[1].split()[0])
    assert after <= stopped < 6 and not (out / "final").exists()
    assert list_checkpoints(out)[-1][0] == stopped  # the step in flight finished and was checkpointed
    assert verify_checkpoint(list_checkpoints(out)[-1][1]) is None
    assert not (out / LOCK_FILE).exists()  # released on the way out
    result = train(tiny(class_dir, out, resume="latest"))
    assert result.resumed_from.endswith(f"checkpoint-{stopped:08d}")
    assert_same_weights(final_weights(out), straight)


# --- 3. one run per output folder -------------------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(class_dir, tmp_path):
    out = tmp_path / "run"
    first = _start(class_dir, out, max_steps=1000)  # >= 150 s: outlives the second's start
    try:
        _wait_for_steps(first, out / "metrics.jsonl", 1)
        second = subprocess.run([sys.executable, "-m", "unlearn_fast.cli", *_cli_argv(class_dir, out, resume="latest")],
                                env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second started"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert second.returncode == 2
    err = [line for line in second.stderr.strip().splitlines() if "it/s]" not in line]
    assert len(err) == 1 and f"is in use by process {first.pid} on " in err[0] and "Traceback" not in err[0], err


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(class_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "started": "then"}))
    with pytest.warns(UserWarning, match=rf"taking over .*{LOCK_FILE} left by process {gone.pid} .*no longer exists"):
        assert train(tiny(class_dir, out, max_steps=1, checkpoint_every=0)).step == 1
    assert not (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}))
    with pytest.raises(OutputInUseError, match=rf"in use by process {os.getpid()}"):
        train(tiny(class_dir, out, max_steps=1, overwrite=True))
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "started": "now"}))
    with pytest.raises(OutputInUseError, match=r"in use by process 1 on another-host"):
        train(tiny(class_dir, out, max_steps=1, overwrite=True))


# --- write failures ---------------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(class_dir, tmp_path, monkeypatch):
    import unlearn_fast.training.checkpoints as ckpt

    real_save = ckpt.torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **k):
        if "checkpoint-00000004" in str(f):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match=r"^checkpoint: writing .*checkpoint-00000004 failed \(the disk is "
                                                   r"full\); nothing was replaced, the last checkpoint on disk is "
                                                   r".*checkpoint-00000002"):
        train(tiny(class_dir, out))
    assert calls["n"] == 1
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert verify_checkpoint(out / "checkpoint-00000002") is None
    assert not list(out.glob(".tmp-*")) and not (out / LOCK_FILE).exists()
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert train(tiny(class_dir, out, resume="latest")).resumed_from.endswith("checkpoint-00000002")


# --- 4. damaged model folders: one error line naming the file, for every command --------------------


def _damage(folder: Path, how: str) -> str:
    """Damage the class UNet folder ``folder`` in place; returns the file the error must name."""
    weights, config = folder / "diffusion_pytorch_model.safetensors", folder / "config.json"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
        return str(weights)
    if how == "garbage":
        weights.write_bytes(b"\x00" * 64)
        return str(weights)
    if how == "no_config":
        config.unlink()
        return str(config)
    if how == "bad_config":
        config.write_text('{"_class_name": "UNet2DModel", "sample_size": ')
        return str(config)
    if how == "wrong_kind":  # a scheduler folder where a model should be
        weights.unlink()
        config.write_text(json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": 10}))
        return str(folder)
    raise ValueError(how)


COMMANDS = {
    "train": lambda d, tmp: ["train", "--model-path", d, "--forget", "3", "--max-steps", "1", "--output-dir",
                             str(tmp / "out"), "--no-progress"],
    "sample": lambda d, tmp: ["sample", "--model-path", d, "--prompt", "3", "--steps", "1", "--out",
                              str(tmp / "g.png")],
    "eval": lambda d, tmp: ["eval", "--model-path", d, "--forget", "3", "--per-class", "1", "--steps", "1"],
    "continual": lambda d, tmp: ["continual", "--sequence", "3", "--method", "naive", "--model-path", d,
                                 "--steps", "1", "--eval-per-class", "1", "--out", str(tmp / "c")],
}


@pytest.mark.parametrize("how", ["truncated", "garbage", "no_config", "bad_config", "wrong_kind"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_model_folder_gets_one_error_line_naming_the_file(class_dir, tmp_path, capsys, how, command):
    import shutil

    from unlearn_fast.cli import main

    folder = tmp_path / "model"
    shutil.copytree(class_dir, folder)
    named = _damage(folder, how)
    capsys.readouterr()
    try:
        code = main(COMMANDS[command](str(folder), tmp_path))
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"unlearn-fast {command}: error: ") and named in err[0] and "Traceback" not in err[0], err[0]


# --- the continual runner resumes at the request it reached -----------------------------------------

CONTINUAL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
import unlearn_fast.training.data as data
from unlearn_fast.cli import main
real_sample = data.SampleSource.sample
def paced_sample(self, generator):
    time.sleep({pace})
    return real_sample(self, generator)
data.SampleSource.sample = paced_sample
sys.exit(main({argv}))
"""


def test_continual_resumes_at_the_request_it_reached(tmp_path):
    def argv(out):
        return ["continual", "--sequence", "3,5", "--method", "naive", "--steps", "6",
                "--batch-size", "6", "--eval-per-class", "1", "--eval-steps", "1", "--out", str(out), "--threads", "1"]

    def run(out, pace=0.0):
        script = CONTINUAL_SCRIPT.format(pace=pace, argv=repr(argv(out)))
        return subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    out = tmp_path / "seq"
    proc = run(out, pace=0.15)
    started = out / "naive" / "step02" / LOCK_FILE  # request 2's run has begun
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not started.exists():
            time.sleep(0.01)
        time.sleep(0.2)  # in request 2's set-up or first steps (6 steps take >= 0.9 s)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "run the same command again" in err.strip().splitlines()[-1]
    first_final = out / "naive" / "step01" / "final" / "diffusion_pytorch_model.safetensors"
    stamp = first_final.stat().st_mtime_ns
    assert list_checkpoints(out / "naive" / "step02") and not (out / "naive" / "step02" / "final").exists()

    again = run(out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert first_final.stat().st_mtime_ns == stamp  # request 1 was not trained again
    straight = tmp_path / "straight"
    ref = run(straight)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    assert_same_weights(final_weights(out / "naive" / "step02"), final_weights(straight / "naive" / "step02"))


DDP_STOP_SCRIPT = """
import json, sys, time, torch
torch.set_num_threads(1)
import torch.distributed as dist
import unlearn_fast.training.data as data
from unlearn_fast.config import TrainConfig
from unlearn_fast.training import TrainingInterrupted, train
real_sample = data.SampleSource.sample
def paced_sample(self, generator):
    time.sleep(0.2)
    return real_sample(self, generator)
data.SampleSource.sample = paced_sample
try:
    train(TrainConfig(**{config}))
    code = 0
except TrainingInterrupted as e:
    code = 128 + e.signum
    with open(f"{out}/stopped_rank{{dist.get_rank()}}.json", "w") as f:
        json.dump({{"message": str(e), "checkpoint": e.checkpoint}}, f)
sys.exit(code)
"""


def test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(class_dir, tmp_path):
    from helpers import free_port

    out = tmp_path / "ddp"
    config = tiny(class_dir, out, max_steps=200, checkpoint_every=0, data="pool", pool_size=2, pool_steps=1)
    script = DDP_STOP_SCRIPT.format(config=repr(config.to_dict()), out=str(out))
    port, procs = str(free_port()), []
    for rank in range(2):
        env = subprocess_env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        _wait_for_steps(procs[0], out / "metrics.jsonl", 3, timeout=240)
        procs[1].send_signal(signal.SIGTERM)  # only the second rank is told
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [143, 143], "\n".join(log[-2000:] for log in logs)
    stopped = [json.loads((out / f"stopped_rank{r}.json").read_text()) for r in range(2)]
    assert stopped[0]["checkpoint"] == stopped[1]["checkpoint"]  # the same step on both ranks
    ckpt = Path(stopped[0]["checkpoint"])
    assert verify_checkpoint(ckpt) is None
    assert (ckpt / "rng_state_0.pt").is_file() and (ckpt / "rng_state_1.pt").is_file()
