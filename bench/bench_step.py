"""Step benchmark: one RU unlearning step with our engine against a straightforward loop.

The straightforward loop is what a user writes without unlearn_fast: separate no-grad
teacher calls for the anchor, the forget concept and the retained prompts, a float32
teacher, the target built in PyTorch, ``F.mse_loss`` for each term. Ours: one
``UnlearningObjective.loss`` (one batched teacher call, the fused loss, the dual update;
with ``--teacher-dtype bf16`` the teacher runs in bf16 under autocast).

Models: ``tiny`` (a small class-conditional UNet2DModel at 16x16, for the CPU), ``sd15``
(a UNet2DConditionModel with the Stable Diffusion 1.5 architecture and random weights,
4x64x64 latents, 77x768 text embeddings), ``sdxl`` (the SDXL base UNet, 4x128x128 latents,
77x2048 embeddings, pooled 1280 and time ids, through ``models.SDXLUNet``) and ``flux``
(the FLUX.1-dev transformer, 16x64x64 latents packed 2x2 (512 px), 512x4096 T5 and 768
pooled embeddings, guidance embedding, through ``models.FluxTransformer``; flow matching);
``sdxl-tiny`` and ``flux-tiny`` are the same code paths on the tiny pipelines of
``models.tiny`` (the GPU script's CPU dry run). The text-to-image adapters get random
precomputed embeddings in place of text encoders. With ``--lora R`` the student trains
rank-R LoRA adapters on the attention projections: the engine's teacher is the same
network with its adapters off, the straightforward loop's a deep-copied fp32 network.

Peak memory: on a GPU from the allocator's statistics; on the CPU each provider runs in
a process of its own (``--provider``) and reports its peak resident memory above what the
process held before building the models.

    python bench/bench_step.py --device cpu --model tiny --batch 32
    python bench/bench_step.py --device cpu --model sd15 --batch 2 --lora 8 --reps 2
    python bench/bench_step.py --device cuda --model sd15 --batch 8 --teacher-dtype bf16
    python bench/bench_step.py --device cuda --model flux --batch 2 --lora 16 --dtype bf16 --provider unlearn_fast
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import os
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import FIELDS, peak_memory, quantiles  # noqa: E402

import unlearn_fast as uf  # noqa: E402
from unlearn_fast.engine import UnlearningObjective  # noqa: E402
from unlearn_fast.methods import Batch, ReverseKLUnlearning  # noqa: E402
from unlearn_fast.models import ClassConditionalUNet, ConditionedModel  # noqa: E402

NUM_CONDITIONS = 11  # 10 concepts + the null condition (id 10)


class EmbeddingTableUNet(ConditionedModel):
    """A UNet2DConditionModel whose conditions are rows of a fixed random embedding table
    (stands in for a frozen text encoder's cached prompt embeddings)."""

    def __init__(self, unet, embeddings):
        self.module = unet
        self.embeddings = embeddings
        self.conditions = [str(i) for i in range(len(embeddings))]
        self.null_id = len(embeddings) - 1

    def predict(self, x_t, t, cond_ids):
        return self.module(x_t, t, encoder_hidden_states=self.embeddings[cond_ids].to(x_t.dtype)).sample


def build(model: str, device: str, dtype: torch.dtype = torch.float32):
    """``(adapter, scheduler, sample shape)`` of the benchmark model ``model`` (random weights)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    if model == "tiny":
        unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                           num_class_embeds=NUM_CONDITIONS).to(device)
        return ClassConditionalUNet(unet, null_class=NUM_CONDITIONS - 1), scheduler, (1, 16, 16)
    if model in ("sdxl", "sdxl-tiny", "flux", "flux-tiny"):
        return _text_to_image(model, device, dtype)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(device)  # the SD1.5 layout
    emb = torch.randn(NUM_CONDITIONS, 77, 768, device=device)
    return EmbeddingTableUNet(unet, emb), scheduler, (4, 64, 64)


#: the SDXL base UNet's architecture (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
#: the FLUX.1-dev transformer's architecture (black-forest-labs/FLUX.1-dev, transformer/config.json)
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def _text_to_image(model: str, device: str, dtype: torch.dtype):
    """SDXL or Flux through the package's own adapters, with random precomputed embeddings."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, UNet2DConditionModel

    from unlearn_fast.models import FluxTransformer, SDXLUNet, tiny

    conditions = [str(i) for i in range(NUM_CONDITIONS - 1)] + [""]
    g = torch.Generator().manual_seed(0)
    with torch.device(device):  # parameters made where they run: a 12B model is not built on the host first
        if model.startswith("sdxl"):
            unet = tiny.build_sdxl().unet.to(device) if model == "sdxl-tiny" else UNet2DConditionModel(**SDXL_UNET)
            unet = unet.to(dtype)
            width, pooled = unet.config.cross_attention_dim, unet.config.projection_class_embeddings_input_dim \
                - 6 * unet.config.addition_time_embed_dim
            emb = {"encoder_hidden_states": torch.randn(NUM_CONDITIONS, 77, width, generator=g),
                   "text_embeds": torch.randn(NUM_CONDITIONS, pooled, generator=g)}
            resolution = 64 if model == "sdxl-tiny" else 1024  # 8x8 latents (the VAE factor 8)
            adapter = SDXLUNet(unet, [None, None], [None, None], conditions, resolution=resolution, embeddings=emb,
                               force_zeros_for_empty_prompt=False, components={"vae": None})
            from diffusers import DDPMScheduler

            scheduler = DDPMScheduler(num_train_timesteps=1000)
        else:
            transformer = tiny.build_flux().transformer.to(device) if model == "flux-tiny" \
                else FluxTransformer2DModel(**FLUX_TRANSFORMER)
            transformer = transformer.to(dtype)
            cfg = transformer.config
            emb = {"encoder_hidden_states": torch.randn(NUM_CONDITIONS, 512 if model == "flux" else 16,
                                                        cfg.joint_attention_dim, generator=g),
                   "pooled_projections": torch.randn(NUM_CONDITIONS, cfg.pooled_projection_dim, generator=g)}
            resolution = 64 if model == "flux-tiny" else 512
            adapter = FluxTransformer(transformer, None, None, None, None, conditions, resolution=resolution,
                                      embeddings=emb, components={"vae": None})
            scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    adapter.components = {}
    return adapter, scheduler, adapter.sample_shape()


def add_lora(adapter: ConditionedModel, rank: int) -> None:
    """Rank-``rank`` peft LoRA adapters on the attention projections; only they train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        lora_dropout=0.0, init_lora_weights=True)
    adapter.module = get_peft_model(adapter.module, config)


def _each_in_its_own_process(argv: list[str]) -> int:
    """Both providers, each in a fresh process (the CPU's peak resident memory is per process)."""
    lines = []
    for provider in ("unlearn_fast", "reference_loop"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--provider", provider],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stdout + out.stderr)
            return out.returncode
        lines += [line for line in out.stdout.splitlines() if line.startswith("  " + provider)]
        header = out.stdout.splitlines()[0]
    ms = [float(line.split()[1]) for line in lines]
    mem = [float(line.split("peak ")[1].split()[0]) for line in lines]
    print(header)
    print("\n".join(lines))
    print(f"  speed-up {ms[1] / ms[0]:.2f}x, memory ratio {mem[0] / mem[1]:.2f}x (peak resident memory above "
          f"each process's own before the models)")
    return 0


def make_batch(batch: int, shape, device, forget: int = 3) -> Batch:
    g = torch.Generator().manual_seed(0)
    half = batch // 2
    cond = torch.cat([torch.full((half,), forget), torch.randint(0, 3, (batch - half,), generator=g)])
    role = torch.cat([torch.zeros(half), torch.ones(batch - half)]).long()
    return Batch(torch.randn((batch, *shape), generator=g), cond.long(), role).to(device)


def reference_step(student, teacher, scheduler, batch: Batch, eta: float, generator):
    """The straightforward loop: separate fp32 teacher calls and F.mse_loss per term."""
    x0 = batch.x0
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    if "FlowMatch" in type(scheduler).__name__:  # x_t on the straight path, sigma from the shifted table
        idx = torch.randint(0, 1000, (len(batch),), device=x0.device, generator=generator)
        t = scheduler.timesteps.to(x0.device)[idx]
        sigma = (t / 1000).to(x0.dtype).view(-1, 1, 1, 1)
        x_t = (1 - sigma) * x0 + sigma * noise
    else:
        t = torch.randint(0, 1000, (len(batch),), device=x0.device, generator=generator)
        x_t = scheduler.add_noise(x0, noise, t)
    forget = batch.role == 0
    xf, tf, cf = x_t[forget], t[forget], batch.cond[forget]
    xr, tr, cr = x_t[~forget], t[~forget], batch.cond[~forget]
    with torch.no_grad():
        eps_anchor = teacher.predict(xf, tf, torch.full_like(cf, teacher.null_id))
        eps_forget = teacher.predict(xf, tf, cf)
        eps_retain = teacher.predict(xr, tr, cr)
    target = eps_anchor - eta * (eps_forget - eps_anchor)
    loss = F.mse_loss(student.predict(xf, tf, cf).float(), target.float())
    loss = loss + F.mse_loss(student.predict(xr, tr, cr).float(), eps_retain.float())
    return loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, choices=["tiny", "sd15", "sdxl", "flux", "sdxl-tiny", "flux-tiny"],
                        help="default: tiny on CPU, sd15 on GPU")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the networks' weights and inputs")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--teacher-dtype", default=None, choices=["bf16", "fp16"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", default=None)
    parser.add_argument("--out", default=None, help="folder: writes step.csv there")
    parser.add_argument("--lora", type=int, default=None, metavar="RANK", help="train LoRA adapters of this rank")
    parser.add_argument("--provider", default="both", choices=["both", "unlearn_fast", "reference_loop"],
                        help="run one side only (on the CPU, 'both' runs each in its own process for peak memory)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.provider == "both" and args.model == "sd15":
        return _each_in_its_own_process(argv if argv is not None else sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name = args.model or ("sd15" if args.device == "cuda" else "tiny")
    batch_size = args.batch or (8 if model_name == "sd15" else 32)
    device = args.device
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    student, scheduler, shape = build(model_name, device, dtype)
    ref_teacher = None
    if args.provider != "unlearn_fast":  # the straightforward loop's teacher: a deep-copied network
        ref_teacher = copy.copy(student)
        ref_teacher.module = copy.deepcopy(student.module).requires_grad_(False).eval()
    if args.lora:
        add_lora(student, args.lora)
        teacher = student.teacher()  # the same weights with the adapters off
    else:
        teacher = ref_teacher if ref_teacher is not None else copy.copy(student)
        if teacher.module is student.module:
            teacher.module = copy.deepcopy(student.module).requires_grad_(False).eval()
        if args.teacher_dtype and device == "cuda":
            teacher = copy.copy(teacher)
            teacher.module = copy.deepcopy(teacher.module).to({"bf16": torch.bfloat16, "fp16": torch.float16}[args.teacher_dtype])
    batch = make_batch(batch_size, shape, device)
    batch.x0 = batch.x0.to(dtype)
    params = [p for p in student.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    method = ReverseKLUnlearning([3], NUM_CONDITIONS - 1, num_conditions=NUM_CONDITIONS, init_lambda=0.5)
    teacher_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.teacher_dtype)
    objective = UnlearningObjective(student, scheduler, method, teacher=teacher, teacher_dtype=teacher_dtype)
    gen = torch.Generator(device).manual_seed(0)
    eta = 0.5 / (1 - 0.5)

    def ours():
        loss, _ = objective.loss(batch, generator=gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def reference():
        loss = reference_step(student, ref_teacher, scheduler, batch, eta, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    date = datetime.date.today().isoformat()
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{os.cpu_count()}cores-{torch.get_num_threads()}threads"
    versions = f"torch={torch.__version__};unlearn_fast={uf.__version__}"
    rows = []
    results = {}
    chosen = [(n, f) for n, f in (("unlearn_fast", ours), ("reference_loop", reference))
              if args.provider in ("both", n)]
    for name, fn in chosen:
        q = quantiles(fn, device, warmup=1 if model_name == "sd15" and device == "cpu" else 2, reps=args.reps,
                      min_seconds=0)
        mem = peak_memory(fn, device)
        if mem is None and args.provider != "both":  # CPU, one provider in this process: peak RSS
            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
        results[name] = (q, mem)
        size = f"{model_name}-b{batch_size}" + (f"-teacher_{args.teacher_dtype}" if args.teacher_dtype else "") \
            + (f"-lora{args.lora}" if args.lora else "") + ("-bf16" if args.dtype == "bf16" else "")
        rows.append(dict(kernel="ru_step", provider=name, mode="full", metric="ms", size=size,
                         p20=f"{q[0]:.4g}", p50=f"{q[1]:.4g}", p80=f"{q[2]:.4g}", device=dev_name,
                         versions=versions, date=date))
        if mem is not None:
            rows.append(dict(rows[-1], metric="peak_MiB", p20=f"{mem:.1f}", p50=f"{mem:.1f}", p80=f"{mem:.1f}"))
    print(f"RU step, {model_name}, batch {batch_size}{f', LoRA rank {args.lora}' if args.lora else ''}, {dev_name}")
    for name, (q, mem) in results.items():
        print(f"  {name:15s}{q[1]:10.2f} ms (p50)" + (f", peak {mem:.0f} MiB" if mem else ""))
    if len(results) == 2:
        (ours_q, ours_mem), (ref_q, ref_mem) = results["unlearn_fast"], results["reference_loop"]
        print(f"  speed-up {ref_q[1] / ours_q[1]:.2f}x" + (f", memory ratio {ours_mem / ref_mem:.2f}x" if ours_mem else ""))
    path = args.csv or (os.path.join(args.out, "step.csv") if args.out else None)
    if path:
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
