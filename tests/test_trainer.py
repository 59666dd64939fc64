"""The training loop: configuration errors, checkpoints, exact resume after SIGKILL,
non-finite stops, 2-process DDP, and prompt erasure on a tiny text-to-image UNet.

Everything runs on tiny models (8x8 images, 8/16 channels) for a few steps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearn_fast.cli import main as cli_main
from unlearn_fast.config import ConfigError, TrainConfig, load_train_config
from unlearn_fast.methods import METHODS, NegGrad
from unlearn_fast.training import NonFiniteError, list_checkpoints, train

from helpers import assert_same_weights, run_ranks, subprocess_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- tiny models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> str:
    """A tiny text-to-image folder: UNet2DConditionModel, CLIP text encoder, an in-memory
    byte-level BPE tokenizer, a DDPM scheduler (no download anywhere)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = tmp_path_factory.mktemp("tiny_text")
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("a", "t</w>"), ("c", "at</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=8)
    assert tokenizer.tokenize("a cat") == ["a</w>", "cat</w>"]
    tokenizer.save_pretrained(path / "tokenizer")
    torch.manual_seed(0)
    end = vocab["<|endoftext|>"]
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                           bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end))
    encoder.save_pretrained(path / "text_encoder")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    unet.save_pretrained(path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    return str(path)


def tiny(class_dir, out, **kw) -> TrainConfig:
    values = dict(method="ru", forget=["3"], retain=["1", "7"], model_path=class_dir, batch_size=6, max_steps=4,
                  log_every=1, output_dir=str(out), progress=False, method_kwargs={"bound": 0.05})
    values.update(kw)
    return TrainConfig(**values)


pytestmark = pytest.mark.usefixtures("one_thread")




def weights_of(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "diffusion_pytorch_model.safetensors"))




# --- configuration --------------------------------------------------------------------------------


def test_config_file_unknown_key_names_it(tmp_path, class_dir):
    f = tmp_path / "run.toml"
    f.write_text(f'forget = ["3"]\nmodel_path = "{class_dir}"\nmax_step = 3\n')
    with pytest.raises(ConfigError, match=r"^max_step: unknown key"):
        load_train_config(str(f))


@pytest.mark.parametrize("key, value, expected", [
    ("max_steps", "ten", "max_steps: expected int, got str"),
    ("max_steps", True, "max_steps: expected int, got bool"),
    ("lr", "fast", "lr: expected float, got str"),
    ("deterministic", 1, "deterministic: expected bool, got int"),
    ("forget", "3", "forget: expected list of str or int, got str"),
    ("train_params", "qlora", "train_params: expected one of 'all', 'cross_attn', 'no_cross_attn', 'lora' or null"),
    ("mixed_precision", "fp8", "mixed_precision: expected one of 'no', 'fp16', 'bf16'"),
    ("t_range", [500, 100], "t_range: expected [low, high]"),
    ("forget_fraction", 1.5, "forget_fraction: expected a float in [0, 1]"),
    ("method", "magic", "method: expected one of"),
])
def test_config_wrong_types_and_values_name_the_key(key, value, expected):
    values = {"forget": ["3"], key: value}
    with pytest.raises(ConfigError) as err:
        TrainConfig(**values)
    assert str(err.value).startswith(expected), str(err.value)


def test_config_method_kwargs_checked_against_the_method():
    with pytest.raises(ConfigError, match=r"^method_kwargs.bogus: unknown argument of method 'ru'"):
        TrainConfig(forget=["3"], method_kwargs={"bogus": 1})
    with pytest.raises(ConfigError, match=r"^method_kwargs.bound: expected float, got str"):
        TrainConfig(forget=["3"], method_kwargs={"bound": "high"})
    with pytest.raises(ConfigError, match=r"^method_kwargs.forget: set by the trainer"):
        TrainConfig(forget=["3"], method_kwargs={"forget": [1]})
    assert TrainConfig(forget=["3"], method="esd", method_kwargs={"eta": 2}).method_kwargs == {"eta": 2.0}


def test_config_missing_model_path_names_it(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ConfigError, match="model_path: no such file or directory") as err:
        TrainConfig(forget=["3"], model_path=missing)
    assert missing in str(err.value)


def test_config_yaml_then_flags(tmp_path, class_dir, capsys):
    from unlearn_fast.cli import build_parser, config_from_args

    f = tmp_path / "run.yaml"
    f.write_text(f"method: fu\nforget: [3]\nmax_steps: 5\nmodel_path: {class_dir}\nmethod_kwargs:\n  bound: 0.2\n")
    args = build_parser().parse_args(["train", "--config", str(f), "--max-steps", "7", "--retain", "1,2", "4",
                                      "--method-kwarg", "dual_lr=0.3", "--t-range", "0", "500", "--no-progress"])
    config = config_from_args(args)
    assert (config.method, config.forget, config.max_steps, config.retain) == ("fu", [3], 7, ["1", "2", "4"])
    assert config.method_kwargs == {"bound": 0.2, "dual_lr": 0.3} and config.t_range == [0, 500]
    assert config.progress is False
    anchored = config_from_args(build_parser().parse_args(["train", "--forget", "a red cat", "--anchor-map",
                                                           "a red cat = a cat"]))
    assert anchored.anchor_map == {"a red cat": "a cat"}
    with pytest.raises(ConfigError, match="--anchor-map: expected FORGET=ANCHOR, got 'a cat'"):
        config_from_args(build_parser().parse_args(["train", "--forget", "x", "--anchor-map", "a cat"]))
    # the CLI reports a bad value with the key and exits 2
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "--config", str(f), "--batch-size", "many"])
    assert exit_.value.code == 2
    assert "batch_size: expected int, got str ('many')" in capsys.readouterr().err


# --- a run on the tiny class model ---------------------------------------------------------------------


def test_class_run_checkpoints_and_final_save(class_dir, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    from unlearn_fast.models_zoo import load_class_ddpm

    out = tmp_path / "run"
    code = cli_main(["train", "--model-path", class_dir, "--forget", "3", "--retain", "1", "7", "--max-steps", "6",
                     "--batch-size", "6", "--checkpoint-every", "2", "--keep-checkpoints", "2", "--log-every", "2",
                     "--output-dir", str(out), "--no-progress", "--method-kwarg", "bound=0.05"])
    assert code == 0
    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == [4, 6]  # keep the last 2
    assert not list(out.glob(".tmp-*"))
    for _, path in ckpts:
        names = {p.name for p in path.iterdir()}
        assert {"model.safetensors", "optimizer.pt", "lr_scheduler.pt", "method.pt", "rng_state_0.pt",
                "trainer_state.json"} <= names
        assert "lambdas" in torch.load(path / "method.pt", weights_only=True)["duals"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4, 6]
    assert all("ru/lambda[3]" in m and "ru/constraint[3]" in m and m["loss"] > 0 for m in lines)

    final = out / "final"
    unet = UNet2DModel.from_pretrained(final)  # diffusers loads it back
    DDPMScheduler.from_pretrained(final)
    load_class_ddpm(str(final))
    trained = {k: v for k, v in unet.state_dict().items()}
    assert_same_weights(trained, load_file(str(ckpts[-1][1] / "model.safetensors")))
    start = weights_of(class_dir)
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    assert all(torch.isfinite(v).all() for v in trained.values())
    # a fresh run into a folder with checkpoints must say resume or overwrite
    with pytest.raises(ValueError, match="resume = 'latest'"):
        train(tiny(class_dir, out))


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import unlearn_fast.training.checkpoints as trainer
from unlearn_fast.training import train
from unlearn_fast.config import TrainConfig

real_save = trainer.save_file
def dying_save(tensors, filename, metadata=None):
    if "checkpoint-00000006" in filename:  # die half-way through writing checkpoint 6
        with open(filename, "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(tensors, filename, metadata=metadata)
trainer.save_file = dying_save
train(TrainConfig(**{config}))
"""


def test_sigkill_then_resume_is_bit_identical(class_dir, tmp_path):
    common = dict(max_steps=8, checkpoint_every=2, keep_checkpoints=2, grad_accum=2, lr=1e-3,
                  lr_scheduler="cosine", lr_warmup_steps=2, forget_fraction=0.5, seed=3)
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(config=repr(tiny(class_dir, killed, **common).to_dict()))
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # the half-written checkpoint stays under its temporary name; the last complete one is step 4
    assert [s for s, _ in list_checkpoints(killed)] == [2, 4]
    assert (killed / ".tmp-checkpoint-00000006").is_dir()
    assert not (killed / "final").exists()

    resumed = train(tiny(class_dir, killed, resume="latest", **common))
    assert resumed.resumed_from.endswith("checkpoint-00000004") and resumed.step == 8
    straight = train(tiny(class_dir, tmp_path / "straight", **common))

    assert_same_weights(weights_of(resumed.final_dir), weights_of(straight.final_dir))
    ck_r, ck_s = killed / "checkpoint-00000008", tmp_path / "straight" / "checkpoint-00000008"
    assert_same_weights(load_file(str(ck_r / "model.safetensors")), load_file(str(ck_s / "model.safetensors")))
    duals_r = torch.load(ck_r / "method.pt", weights_only=True)["duals"]
    duals_s = torch.load(ck_s / "method.pt", weights_only=True)["duals"]
    assert all(torch.equal(duals_r[k], duals_s[k]) for k in ("lambdas", "estimate"))
    opt_r = torch.load(ck_r / "optimizer.pt", weights_only=True)["state"]
    opt_s = torch.load(ck_s / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(opt_r[i]["exp_avg_sq"], opt_s[i]["exp_avg_sq"]) for i in opt_s)
    # the log was cut back to the checkpoint and written again: the same losses, each step once
    log_r = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    log_s = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log_r] == list(range(1, 9))
    assert [m["loss"] for m in log_r] == [m["loss"] for m in log_s]


class NaNAt(NegGrad):
    """NegGrad whose loss turns NaN from its ``at``-th step on."""

    def __init__(self, at: int = 3):
        super().__init__(alpha=0.1)
        self.at, self.calls = at, 0

    def recipe(self, batch, w):
        self.calls += 1
        recipe = super().recipe(batch, w)
        if self.calls >= self.at:
            recipe.weights = recipe.weights * float("nan")
        return recipe


def test_non_finite_loss_stops_and_keeps_last_checkpoint(class_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "nan_at", NaNAt)
    out = tmp_path / "nan"
    config = tiny(class_dir, out, method="nan_at", method_kwargs={"at": 3}, max_steps=10, checkpoint_every=2,
                  keep_checkpoints=0, log_every=5)
    # the loss is read on the host only at checkpoints and logging steps: noticed at step 4,
    # before checkpoint 4 is written; the error names step 3
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3 \(noticed at step 4\)") as err:
        train(config)
    assert "checkpoint-00000002" in str(err.value)
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert not list(out.glob(".tmp-*")) and not (out / "final").exists()
    weights = load_file(str(out / "checkpoint-00000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


DDP_SCRIPT = """
import os, torch
torch.set_num_threads(1)
from unlearn_fast.config import TrainConfig
from unlearn_fast.training import train
import torch.distributed as dist
result = train(TrainConfig(**{config}))
rank = dist.get_rank()
assert dist.get_world_size() == 2
state = {{k: v.detach().clone() for k, v in result.model.module.state_dict().items()}}
torch.save({{"weights": state, "duals": result.method.state_dict()["duals"]}}, f"{out}/rank{{rank}}.pt")
"""




def test_ddp_two_processes_agree(class_dir, tmp_path):
    out = tmp_path / "ddp"
    # data = "pool": the main process samples the frozen teacher once, the other rank waits and reads it
    config = tiny(class_dir, out, max_steps=3, checkpoint_every=3, lr=1e-3, data="pool", pool_size=4, pool_steps=2,
                  method_kwargs={"bound": 0.05, "dual_lr": 5.0})
    run_ranks(DDP_SCRIPT.format(config=repr(config.to_dict()), out=str(out)))
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2))
    # each rank drew different samples: only the all-reduces (gradients, dual estimates) can make them agree
    assert torch.equal(r0["duals"]["lambdas"], r1["duals"]["lambdas"])
    assert torch.equal(r0["duals"]["estimate"], r1["duals"]["estimate"])
    assert r0["duals"]["lambdas"].item() != pytest.approx(0.3)  # the duals did move
    assert_same_weights(r0["weights"], r1["weights"])
    start = weights_of(class_dir)
    assert any(not torch.equal(r0["weights"][k], start[k]) for k in start)
    ckpt = out / "checkpoint-00000003"
    assert (ckpt / "rng_state_0.pt").is_file() and (ckpt / "rng_state_1.pt").is_file()
    rng0, rng1 = (torch.load(ckpt / f"rng_state_{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(rng0["data"], rng1["data"])  # per-rank data streams
    assert_same_weights(weights_of(out / "final"), r0["weights"])
    assert load_file(str(out / "pool.safetensors"))["x"].shape == (12, 1, 8, 8)  # 4 per class: 3, 1, 7


# --- prompt erasure on a tiny text-to-image model --------------------------------------------------------


def test_text_prompt_erasure_with_lora(text_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out = tmp_path / "text"
    config = TrainConfig(method="ru", forget=["van gogh style"], retain=["a cat"], model_path=text_dir,
                         train_params="lora", lora_rank=2, lr=1e-2, max_steps=3, batch_size=4, pool_size=3,
                         pool_steps=3, checkpoint_every=2, log_every=1, output_dir=str(out), progress=False,
                         method_kwargs={"bound": 0.05})
    result = train(config)
    # the teacher-sample pool (the default data of a prompt model): pool_size latents per prompt
    pool = load_file(str(out / "pool.safetensors"))
    assert pool["x"].shape == (6, 4, 8, 8) and torch.isfinite(pool["x"]).all()
    # LoRA checkpoints hold the adapter weights only
    ckpt = load_file(str(out / "checkpoint-00000002" / "model.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)
    # final/lora is in diffusers' LoRA format: the UNet's adapters under "unet."
    lora = load_file(str(Path(result.final_dir) / "lora" / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("unet.") and ".lora_" in k for k in lora)
    assert "ru/lambda[0]" in result.metrics

    # the final folder loads through diffusers / transformers; the merged UNet changed
    final = Path(result.final_dir)
    unet = UNet2DConditionModel.from_pretrained(final / "unet")
    CLIPTextModel.from_pretrained(final / "text_encoder")
    assert CLIPTokenizer.from_pretrained(final / "tokenizer").tokenize("a cat") == ["a</w>", "cat</w>"]
    base = UNet2DConditionModel.from_pretrained(Path(text_dir) / "unet").state_dict()
    new = unet.state_dict()
    assert new.keys() == base.keys()
    changed = [k for k in base if not torch.equal(base[k], new[k])]
    assert changed and all(k.rsplit(".", 1)[0].split(".")[-1] in ("to_q", "to_k", "to_v", "0") for k in changed)

    # the output is itself a model the trainer can start from (a second request)
    again = train(TrainConfig(method="ablation", forget=["a cat"], model_path=str(final), max_steps=1, batch_size=2,
                              pool_size=2, pool_steps=2, output_dir=str(tmp_path / "again"), progress=False))
    assert again.step == 1


def test_anchor_map_gives_forget_prompts_their_own_anchor(text_dir, tmp_path, monkeypatch):
    """``anchor_map``: the method gets a per-condition anchor table; unnamed forget prompts keep the null."""
    from unlearn_fast.training import loop

    seen = {}
    build = loop.build_method

    def spy(config, injected, **kw):
        seen.update(injected)
        return build(config, injected, **kw)

    monkeypatch.setattr(loop, "build_method", spy)
    result = train(TrainConfig(method="esd", forget=["van gogh style", "a red cat"], retain=["a dog"],
                               anchor_map={"a red cat": "a cat"}, model_path=text_dir, max_steps=1, batch_size=2,
                               pool_size=2, pool_steps=2, sampler_steps=2, output_dir=str(tmp_path / "a"),
                               progress=False))
    assert result.step == 1
    table, forget = seen["anchor"], seen["forget"]
    assert isinstance(table, torch.Tensor) and table.dtype == torch.long
    conditions = list(result.model.conditions)
    assert conditions[int(table[forget[1]])] == "a cat"
    assert int(table[forget[0]]) == result.model.null_id


@pytest.mark.parametrize("anchor_map, expected", [
    ({"a dog": "a cat"}, "anchor_map.a dog: expected a forget condition"),
    ({"a red cat": "van gogh style"}, "anchor_map.a red cat: its anchor 'van gogh style' is itself a forget"),
])
def test_anchor_map_errors_name_the_key(text_dir, tmp_path, anchor_map, expected):
    config = TrainConfig(method="ru", forget=["van gogh style", "a red cat"], retain=["a dog"], anchor_map=anchor_map,
                         model_path=text_dir, max_steps=1, batch_size=2, pool_size=2, pool_steps=2,
                         output_dir=str(tmp_path / "a"), progress=False)
    with pytest.raises(ValueError, match=expected):
        train(config)


def test_anchor_map_config_checks():
    with pytest.raises(ConfigError, match="anchor_map.a cat: a forget condition cannot be its own anchor"):
        TrainConfig(forget=["a cat"], anchor_map={"a cat": "a cat"})
    with pytest.raises(ConfigError, match=r"anchor_map: expected \{forget condition: anchor condition\}"):
        TrainConfig(forget=["a cat"], anchor_map={"a cat": ["a dog"]})


def test_text_esd_x_trains_only_cross_attention(text_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "esd"
    result = train(TrainConfig(method="esd", method_kwargs={"variant": "x", "eta": 1.0}, forget=["van gogh style"],
                               model_path=text_dir, max_steps=2, batch_size=2, pool_size=2, pool_steps=2,
                               sampler_steps=3, lr=1e-2, output_dir=str(out), progress=False))
    base = UNet2DConditionModel.from_pretrained(Path(text_dir) / "unet").state_dict()
    new = UNet2DConditionModel.from_pretrained(Path(result.final_dir) / "unet").state_dict()
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all(".attn2." in k for k in changed)


def test_pool_with_mnist_conditions_takes_real_images_for_those_classes(class_dir, tmp_path):
    from types import SimpleNamespace

    from unlearn_fast.data import load_split
    from unlearn_fast.training import load_model
    from unlearn_fast.training.data import pool_source as _pool_source

    config = tiny(class_dir, tmp_path / "run", data="pool", pool_size=3, pool_steps=2, mnist_conditions=["7"],
                  max_steps=1)
    result = train(config)
    assert result.step == 1
    pool = load_file(str(tmp_path / "run" / "pool.safetensors"))
    assert sorted(pool["cond"].unique().tolist()) == [1, 3]  # 7 is not sampled from the teacher
    adapter, scheduler, _ = load_model(config)
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    source = _pool_source(adapter, scheduler, config, [3], [1, 7], accelerator, tmp_path / "run", [7])
    sevens = source.retain_x[source.retain_c == 7]
    assert len(sevens) == 3 and (source.retain_c == 1).sum() == 3
    real, labels = load_split("train", size=8)
    real7 = real[labels == 7]
    assert all(any(torch.equal(s, r) for r in real7) for s in sevens)  # real train images of class 7
    with pytest.raises(ValueError, match=r"mnist_conditions: classes \[10\] have no images"):
        _pool_source(adapter, scheduler, config, [3], [1, 10], accelerator, tmp_path / "run", [10])
    rgb = SimpleNamespace(module=SimpleNamespace(config=SimpleNamespace(in_channels=3, sample_size=8)))
    with pytest.raises(ValueError, match="mnist_conditions: the embedded MNIST images have 1 channel, the model has 3"):
        _pool_source(rgb, scheduler, config, [3], [1, 7], accelerator, tmp_path / "rgb", [7])


def test_teacher_path_makes_another_model_the_teacher(class_dir, tmp_path):
    """A continual request trains the previous model against the original: the student starts
    from model_path, every teacher prediction comes from teacher_path."""
    from diffusers import DDPMScheduler
    from helpers import T, tiny_class_unet

    other = tmp_path / "other"
    tiny_class_unet(seed=1).save_pretrained(other)
    DDPMScheduler(num_train_timesteps=T).save_pretrained(other)
    start = load_file(str(Path(class_dir) / "diffusion_pytorch_model.safetensors"))
    wanted = load_file(str(other / "diffusion_pytorch_model.safetensors"))
    result = train(tiny(class_dir, tmp_path / "run", teacher_path=str(other), max_steps=1, lr=1e-12))
    teacher = {k: v for k, v in result.teacher.module.state_dict().items()}
    student = result.model.module.state_dict()
    assert all(torch.equal(teacher[k], wanted[k]) for k in wanted)
    assert any(not torch.equal(wanted[k], start[k]) for k in wanted)
    assert all(torch.allclose(student[k], start[k], atol=1e-6) for k in start)  # lr ~0: the student is model_path's
    assert not any(p.requires_grad for p in result.teacher.module.parameters())


def test_teacher_path_errors_name_the_key(class_dir, tmp_path):
    from diffusers import DDPMScheduler
    from helpers import tiny_class_unet

    with pytest.raises(ConfigError, match="teacher_path: no such file or directory"):
        tiny(class_dir, tmp_path / "a", teacher_path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="teacher_path: a LoRA run's teacher is its base model"):
        tiny(class_dir, tmp_path / "b", teacher_path=class_dir, train_params="lora")
    six = tmp_path / "six"
    tiny_class_unet(classes=6).save_pretrained(six)
    DDPMScheduler(num_train_timesteps=10).save_pretrained(six)
    with pytest.raises(ValueError, match="teacher_path: expected a model with the conditions of model_path"):
        train(tiny(class_dir, tmp_path / "c", teacher_path=str(six), max_steps=1))
