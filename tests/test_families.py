"""Every model family end to end on tiny random pipelines saved by diffusers' own ``save_pretrained``.

For each family (SD 1.x, SD 2.x-v, SDXL, SD3, Flux, DiT): the adapter conditions the
denoiser exactly as the family's diffusers pipeline does; RU, ESD and LU train 3 steps
(finite loss, the student changes, the teacher does not); ``final/`` reloads through
``DiffusionPipeline`` as the same class and samples; a LoRA run's ``final/lora`` loads with
``load_lora_weights`` and reproduces the merged model. Plus the flow-matching RU target
against an independent formula.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn_fast.config import TrainConfig
from unlearn_fast.models import load, tiny
from unlearn_fast.training import train

FAMILIES = ["sd", "sd2-v", "sdxl", "sd3", "flux", "dit"]
PROMPT, OTHER = "a photo of a cat", "a dog"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {name: tiny.save(name, str(root / name)) for name in FAMILIES}


def _pipeline(path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path)


def _conditions(name):
    return (["1"], ["2"]) if name == "dit" else ([PROMPT], [OTHER])


# --- the adapters condition as the pipelines do -------------------------------------------------


def _pipeline_prediction(name, pipe, adapter, x, t, prompt):
    """The denoiser's output with the conditioning the diffusers pipeline itself computes."""
    n = len(x)
    if name in ("sd", "sd2-v"):
        emb = pipe.encode_prompt(prompt, "cpu", n, False)[0]
        return pipe.unet(x, t, encoder_hidden_states=emb).sample
    if name == "sdxl":
        emb, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=n,
                                               do_classifier_free_guidance=False)
        ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), emb.dtype,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return pipe.unet(x, t, encoder_hidden_states=emb,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids.repeat(n, 1)}).sample
    if name == "sd3":
        emb, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device="cpu", num_images_per_prompt=n,
                                               do_classifier_free_guidance=False,
                                               max_sequence_length=adapter.max_sequence_length)
        return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled).sample
    if name == "flux":
        emb, pooled, text_ids = pipe.encode_prompt(prompt, None, device="cpu", num_images_per_prompt=n,
                                                   max_sequence_length=adapter.max_sequence_length)
        b, c, h, w = x.shape
        packed = pipe._pack_latents(x, b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", x.dtype)
        out = pipe.transformer(hidden_states=packed, timestep=t / 1000, guidance=torch.full((b,), 3.5),
                               pooled_projections=pooled, encoder_hidden_states=emb, txt_ids=text_ids,
                               img_ids=img_ids).sample
        return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
    label = torch.tensor([int(prompt)] * n)
    return pipe.transformer(x, timestep=t, class_labels=label).sample[:, :x.shape[1]]


@pytest.mark.parametrize("name", FAMILIES)
def test_adapter_conditions_as_the_pipeline_does(pipelines, name):
    prompt = "1" if name == "dit" else PROMPT
    adapter, scheduler = load(pipelines[name], prompts=[prompt, OTHER] if name != "dit" else (), resolution=16)
    pipe = _pipeline(pipelines[name])
    adapter.module.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *adapter.sample_shape()), generator=g)
    t = torch.tensor([700.0, 250.0]) if "FlowMatch" in type(scheduler).__name__ else torch.tensor([700, 250])
    cond = torch.full((2,), adapter.condition_id(prompt))
    with torch.no_grad():
        ours = adapter.predict(x, t, cond)
        theirs = _pipeline_prediction(name, pipe, adapter, x, t, prompt)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    if name == "sdxl":  # force_zeros_for_empty_prompt: the null condition's embeddings are zeros
        null = adapter.cached(torch.tensor([adapter.null_id]), torch.float32)
        assert all(float(v.abs().max()) == 0 for v in null.values())


def test_dit_conditions_by_label_and_has_the_pipelines_null_class(pipelines):
    adapter, _ = load(pipelines["dit"])
    assert adapter.null_id == 1000 and adapter.conditions[adapter.null_id] == ""
    assert adapter.condition_id("goldfish") == 1  # id2label, when the folder has it
    with pytest.raises(ValueError, match=r"condition: 'zebra' is not one of .*\.\.\. 991 more"):
        adapter.condition_id("zebra")


# --- train every family with every kind of method ---------------------------------------------------


def _config(path, out, name, method, **kw):
    forget, retain = _conditions(name)
    values = dict(method=method, forget=forget, retain=retain, model_path=path, max_steps=3, batch_size=2,
                  pool_size=2, pool_steps=2, sampler_steps=3, resolution=16, lr=1e-3, output_dir=str(out),
                  progress=False, log_every=1)
    values.update(kw)
    return TrainConfig(**values)


def _assert_student_moved_teacher_kept(path, result):
    original = _pipeline(path)
    part = "unet" if hasattr(original, "unet") else "transformer"
    before = getattr(original, part).state_dict()
    student = result.model.module.state_dict()
    teacher = result.teacher.module.state_dict()
    assert any(not torch.equal(before[k], student[k]) for k in before), "the student did not change"
    assert all(torch.equal(before[k], teacher[k]) for k in before), "the teacher changed"
    return original, part, student


@pytest.mark.parametrize("method", ["ru", "esd", "lu"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_and_its_final_folder_is_a_pipeline(pipelines, tmp_path, name, method):
    result = train(_config(pipelines[name], tmp_path / "run", name, method))
    assert result.step == 3 and torch.isfinite(torch.tensor(result.metrics["loss"]))
    original, part, student = _assert_student_moved_teacher_kept(pipelines[name], result)

    final = _pipeline(result.final_dir)
    assert type(final) is type(original)
    saved = getattr(final, part).state_dict()
    assert all(torch.equal(saved[k], student[k]) for k in saved)
    kwargs = dict(num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    images = final(class_labels=[1], **kwargs).images if name == "dit" else \
        final(PROMPT, height=16, width=16, **kwargs).images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux"])
def test_lora_final_folder_loads_with_load_lora_weights(pipelines, tmp_path, name):
    result = train(_config(pipelines[name], tmp_path / "run", name, "ru", train_params="lora", lora_rank=2, lr=1e-2))
    lora_dir = Path(result.final_dir) / "lora"
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    kwargs = dict(num_inference_steps=2, output_type="pt", height=16, width=16)
    pipe = _pipeline(pipelines[name])
    before = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(lora_dir))
    with_lora = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    merged = _pipeline(result.final_dir)(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert float((with_lora - before).abs().max()) > 1e-4  # the adapter changes what the pipeline draws
    torch.testing.assert_close(with_lora, merged, rtol=1e-4, atol=1e-4)  # and matches the merged final/


# --- flow matching ---------------------------------------------------------------------------------


def test_flow_matching_ru_loss_matches_an_independent_formula(pipelines):
    """RU on SD3 (flow matching): timesteps drawn as diffusers' scripts draw them, x_t on the
    straight path, the target v_a - alpha (v_f - v_a) in velocity space."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from unlearn_fast.engine import UnlearningObjective
    from unlearn_fast.methods import FORGET, RETAIN, Batch
    from unlearn_fast.methods.ru import ReverseKLUnlearning

    adapter, scheduler = load(pipelines["sd3"], prompts=[PROMPT, OTHER], resolution=16)
    f, r, null = adapter.condition_id(PROMPT), adapter.condition_id(OTHER), adapter.null_id
    method = ReverseKLUnlearning([f], null, num_conditions=len(adapter.conditions), init_lambda=0.3, dual_lr=0.0)
    objective = UnlearningObjective(adapter, scheduler, method)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn((4, *adapter.sample_shape()), generator=g)
    batch = Batch(x0, torch.tensor([f, f, r, r]), torch.tensor([FORGET, FORGET, RETAIN, RETAIN]),
                  torch.tensor([0, 1, -1, -1]), n_forget=2)
    loss, _ = objective.loss(batch, torch.Generator().manual_seed(11))

    gen = torch.Generator().manual_seed(11)  # the same draws, independently
    u = compute_density_for_timestep_sampling("none", 4, generator=gen)
    ref = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    idx = (u * ref.config.num_train_timesteps).long()
    t, sigma = ref.timesteps[idx], ref.sigmas[idx].view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = (1 - sigma) * x0 + sigma * noise
    teacher = objective.teacher
    with torch.no_grad():
        v_a = teacher.predict(x_t[:2], t[:2], torch.full((2,), null))
        v_f = teacher.predict(x_t[:2], t[:2], torch.full((2,), f))
        v_r = teacher.predict(x_t[2:], t[2:], torch.full((2,), r))
    v = adapter.predict(x_t, t, batch.cond)
    lam = 0.3
    alpha, rest = lam / (1 - lam), 1 - lam
    forget_term = rest * (v[:2] - (v_a - alpha * (v_f - v_a))).square().mean((1, 2, 3)).mean()
    retain_term = (v[2:] - v_r).square().mean((1, 2, 3)).mean()
    torch.testing.assert_close(loss, forget_term + retain_term, rtol=1e-5, atol=1e-7)


# --- the user's own images ------------------------------------------------------------------------


@pytest.fixture
def image_dirs(tmp_path):
    """A forget folder (3 PNGs, no metadata) and a retain folder (JPEGs with metadata.jsonl)."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    forget, retain = tmp_path / "forget", tmp_path / "retain"
    forget.mkdir()
    (retain / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(forget / f"f{i}.png")
    names = ["r0.jpg", "r1.jpg", "sub/r2.jpg"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(retain / name)
    (retain / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": n, "text": "a red house" if i == 0 else OTHER}) + "\n" for i, n in enumerate(names)))
    return str(forget), str(retain)


@pytest.mark.parametrize("name", FAMILIES)
def test_fu_trains_on_image_folders_encoded_once_by_the_vae(pipelines, tmp_path, image_dirs, name):
    from safetensors.torch import load_file

    forget, retain = image_dirs
    extra = {} if name == "dit" else {"retain_images": retain}
    config = _config(pipelines[name], tmp_path / "run", name, "fu", data="images", forget_images=forget,
                     retain=["2"] if name == "dit" else [], **extra)
    result = train(config)
    assert result.step == 3 and torch.isfinite(torch.tensor(result.metrics["loss"]))
    _assert_student_moved_teacher_kept(pipelines[name], result)
    cache = sorted((tmp_path / "run" / "latent_cache").glob("*.safetensors"))
    assert len(cache) == (3 if name == "dit" else 6)
    z = load_file(str(cache[0]))["latent"]
    assert z.shape == result.model.sample_shape()
    if name != "dit":  # the metadata prompts became conditions
        assert "a red house" in result.model.conditions
    stamp = [p.stat().st_mtime_ns for p in cache]
    train(TrainConfig(**{**config.to_dict(), "overwrite": True}))  # a second run reads the cache
    assert [p.stat().st_mtime_ns for p in cache] == stamp


def test_image_folder_errors_name_the_file(pipelines, tmp_path, image_dirs):
    from unlearn_fast.config import ConfigError

    forget, _ = image_dirs
    with pytest.raises(ConfigError, match=r"^forget_images: expected a folder of images, got '.*nowhere'"):
        _config(pipelines["sd"], tmp_path / "a", "sd", "fu", data="images", forget_images=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"^forget_images: data = 'images' needs"):
        _config(pipelines["sd"], tmp_path / "a", "sd", "fu", data="images")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"^forget_images: '.*empty' has no images"):
        train(_config(pipelines["sd"], tmp_path / "b", "sd", "fu", data="images", forget_images=str(empty)))
    (Path(forget) / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"^forget_images: .*broken\.png is not an image that can be decoded"):
        train(_config(pipelines["sd"], tmp_path / "c", "sd", "fu", data="images", forget_images=forget))
    (Path(forget) / "broken.png").unlink()
    with pytest.raises(ValueError, match=r"^forget_images: .*f0\.png has no metadata.jsonl text and forget has 2"):
        train(_config(pipelines["sd"], tmp_path / "d", "sd", "fu", data="images", forget_images=forget,
                      forget=[PROMPT, "a car"]))


# --- the command line: sample, eval, prompt files, bad folders ---------------------------------------


def _cli(*argv):
    from unlearn_fast.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_writes_a_grid_original_left_unlearned_right(pipelines, tmp_path, name):
    from PIL import Image

    result = train(_config(pipelines[name], tmp_path / "run", name, "ru", lr=1e-2))
    prompts = ["1", "goldfish"] if name == "dit" else [PROMPT, OTHER]
    out = tmp_path / "grid.png"
    flags = [f for p in prompts for f in ("--prompt", p)]
    assert _cli("sample", "--model-path", result.final_dir, "--compare", pipelines[name], *flags, "--steps", 2,
                "--n", 3, "--resolution", 16, "--out", out) == 0
    import numpy as np

    grid = torch.from_numpy(np.array(Image.open(out).convert("RGB"))).float()
    scale = 4  # 16-pixel cells are upscaled to 64
    cell, gap = 16 * scale, 6 * scale
    assert grid.shape[:2] == (2 * cell + 2 * scale, 6 * cell + gap)  # 2 rows; 3 | gap | 3 images
    left, right = grid[:, :3 * cell], grid[:, 3 * cell + gap:]
    assert float((left - right).abs().mean()) > 1.0  # the unlearned model draws differently from the original
    again = tmp_path / "again.png"
    assert _cli("sample", "--model-path", result.final_dir, "--compare", pipelines[name], *flags, "--steps", 2,
                "--n", 3, "--resolution", 16, "--out", again) == 0
    assert again.read_bytes() == out.read_bytes()  # fixed seeds


def test_sample_and_eval_on_the_embedded_models(tmp_path, capsys):
    result = train(TrainConfig(method="ru", forget=["3"], max_steps=2, batch_size=4, output_dir=str(tmp_path / "run"),
                               progress=False))
    assert _cli("sample", "--model", "class", "--prompt", "3", "--steps", 2, "--n", 2, "--out", tmp_path / "g.png") == 0
    assert _cli("eval", "--model-path", result.final_dir, "--per-class", 2, "--steps", 2,
                "--report", tmp_path / "r.json") == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["forget"] == [3] and 0 <= report["metrics"]["ua"] <= 1 and report["settings"]["per_class"] == 2
    assert "kl_to_original" in report["metrics"]


def test_prompt_files_and_bad_folders_get_one_clear_error(pipelines, tmp_path, capsys):
    import shutil

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# erase these\na photo of a cat\n\na car, red\n")
    out = tmp_path / "run"
    assert _cli("train", "--model-path", pipelines["sd"], "--forget", f"@{prompts}", "--retain", OTHER,
                "--max-steps", 1, "--batch-size", 2, "--pool-size", 1, "--pool-steps", 1, "--output-dir", out,
                "--no-progress") == 0
    info = __import__("json").loads((out / "final" / "unlearn_info.json").read_text())
    assert info["forget"] == [PROMPT, "a car, red"] and info["family"] == "sd"

    def error_of(*argv):
        capsys.readouterr()
        assert _cli(*argv) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]  # loading bars
        assert len(err) == 1 and "Traceback" not in err[0], err
        return err[0]

    assert "no such prompt file" in error_of("train", "--model-path", pipelines["sd"], "--forget", "@nowhere.txt")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    msg = error_of("train", "--model-path", odd, "--forget", "x", "--output-dir", tmp_path / "o1")
    assert "holds a KandinskyPipeline; expected a diffusers folder of one of" in msg and "FluxPipeline" in msg
    broken = tmp_path / "no_t5"
    shutil.copytree(pipelines["flux"], broken)
    shutil.rmtree(broken / "text_encoder_2")
    msg = error_of("train", "--model-path", broken, "--forget", "x", "--output-dir", tmp_path / "o2")
    assert msg.endswith(f"has no text_encoder_2/ component (expected a folder {broken}/text_encoder_2 listed in "
                        "model_index.json)"), msg
    msg = error_of("sample", "--model-path", tmp_path / "nowhere", "--prompt", "x", "--out", tmp_path / "x.png")
    assert "no such folder" in msg


# --- scale-out: two CPU processes (gloo) on a transformer family ------------------------------------

DDP_SCRIPT = """
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from unlearn_fast.config import TrainConfig
from unlearn_fast.training import train
result = train(TrainConfig(**{config}))
state = {{k: v.detach().clone() for k, v in result.model.module.state_dict().items()}}
torch.save({{"weights": state, "duals": result.method.state_dict()["duals"], "step": result.step,
            "resumed_from": result.resumed_from}}, f"{out}/rank{{dist.get_rank()}}-{tag}.pt")
"""


def test_flux_on_two_ddp_processes_ranks_agree_and_resume(pipelines, tmp_path):
    """FSDP cannot run here: accelerate enables it only on accelerator devices (on the CPU a
    2-process run is MULTI_CPU DDP whatever the FSDP settings); docs/models.md says so."""
    from helpers import assert_same_weights, run_ranks

    out = tmp_path / "ddp"
    base = _config(pipelines["flux"], out, "flux", "ru", max_steps=2, checkpoint_every=2,
                   method_kwargs={"bound": 0.05, "dual_lr": 5.0}).to_dict()
    run_ranks(DDP_SCRIPT.format(config=repr(base), out=str(out), tag="first"))
    r0, r1 = (torch.load(out / f"rank{r}-first.pt", weights_only=True) for r in range(2))
    assert_same_weights(r0["weights"], r1["weights"])
    assert torch.equal(r0["duals"]["lambdas"], r1["duals"]["lambdas"])
    ckpt = out / "checkpoint-00000002"
    assert (ckpt / "rng_state_0.pt").is_file() and (ckpt / "rng_state_1.pt").is_file()

    resumed = {**base, "max_steps": 3, "resume": "latest"}
    run_ranks(DDP_SCRIPT.format(config=repr(resumed), out=str(out), tag="resumed"))
    r0, r1 = (torch.load(out / f"rank{r}-resumed.pt", weights_only=True) for r in range(2))
    assert r0["step"] == 3 and r0["resumed_from"] == str(ckpt)
    assert_same_weights(r0["weights"], r1["weights"])
    final = _pipeline(str(out / "final")).transformer.state_dict()
    assert all(torch.equal(final[k], r0["weights"][k]) for k in final)
