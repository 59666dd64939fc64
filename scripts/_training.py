"""Helpers shared by the training scripts of the embedded models (class DDPM, text DDPM,
classifier): the learning-rate schedule, atomic checkpoint writes, the EMA update, and
for the DDPM scripts their common arguments, checkpoint/resume, batches and noising, and for
the two text DDPMs the jointly trained UNet + text encoder and the pipeline-folder export."""

from __future__ import annotations

import math
import os

import torch


def lr_at(step, total, base, warmup, schedule, min_ratio=0.1, time_progress=None):
    """Linear warmup, then constant or cosine (to ``min_ratio * base``). The cosine's progress
    is the step fraction, or ``time_progress`` (fraction of a wall-time budget) when that is
    further along, so a run cut by its time budget still anneals."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if time_progress is not None:
        p = max(p, min(1.0, time_progress))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def atomic_save(obj, path):
    """``torch.save`` to ``path.tmp``, then rename: a crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def ema_update(ema, model, decay):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def optimizer_step(model, ema, opt, loss, lr, step, grad_clip, ema_decay):
    """One step at ``lr``: backward, grad-norm clip (``grad_clip > 0``), update, then the EMA
    with the usual warmup decay ``min(ema_decay, (1 + n) / (10 + n))``. Returns the new step."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    step += 1
    ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
    return step


def add_ddpm_arguments(ap, *, steps, lr, schedule, ckpt, out):
    """The arguments both DDPM pretraining scripts take (defaults that differ are keywords)."""
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--schedule", choices=["constant", "cosine"], default=schedule)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--export-every", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop cleanly after this wall time (0: no limit)")
    ap.add_argument("--ckpt", default=ckpt)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--out", default=out)


def save_training_state(path, model, ema, opt, gen, step, elapsed, loss_avg, args):
    atomic_save(dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                     torch_rng=torch.get_rng_state(), step=step, elapsed=elapsed, loss_avg=loss_avg,
                     args=vars(args)), path)


def resume_training_state(path, model, ema, opt, gen):
    """Load a checkpoint of ``save_training_state`` (our own file); returns ``(step, elapsed, loss_avg)``."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    gen.set_state(ck["gen"])
    torch.set_rng_state(ck["torch_rng"])
    step, elapsed, loss_avg = ck["step"], ck.get("elapsed", 0.0), ck.get("loss_avg")
    print(f"resumed from {path} at step {step} ({elapsed:.0f}s of training so far)", flush=True)
    return step, elapsed, loss_avg


def init_text_ddpm_from(folder, model, ema):
    """Warm start: copy the ``unet/`` and ``text_encoder/`` weights of an exported folder (of
    ``export_text_ddpm``) into both the trained model and its EMA. Returns the folder's
    ``train_info.json`` (``{}`` when absent). Raises ``SystemExit`` naming the folder when it
    does not hold both networks or their shapes do not match."""
    import json

    from safetensors.torch import load_file

    state = {}
    for part in ("unet", "text_encoder"):
        path = os.path.join(folder, part, "model.safetensors" if part == "text_encoder" else
                            "diffusion_pytorch_model.safetensors")
        if not os.path.isfile(path):
            raise SystemExit(f"--init-from: expected an exported text DDPM folder with {part}/ weights, "
                             f"{path} does not exist")
        state.update({f"{part}.{k}": v for k, v in load_file(path).items()})
    try:
        for net in (model, ema):
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if "position_ids" not in k]
            if missing or unexpected:
                raise SystemExit(f"--init-from {folder}: weights do not match the model "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    except RuntimeError as e:  # shape mismatch
        raise SystemExit(f"--init-from {folder}: weights do not match the model ({str(e).splitlines()[0]})")
    info_path = os.path.join(folder, "train_info.json")
    info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
    print(f"initialised from {folder} (step {info.get('steps', '?')} of its own training)", flush=True)
    return info


def batch_indices(n, batch, gen):
    """Endless batches of indices into ``n`` items: a fresh permutation whenever one runs short."""
    perm, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos:pos + batch]
        pos += batch


def noised(x0, alphas_cumprod, gen):
    """``(t, noise, x_t)``: uniform timesteps and the forward process ``q(x_t | x_0)``."""
    t = torch.randint(0, len(alphas_cumprod), (len(x0),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return t, noise, a.sqrt() * x0 + (1 - a).sqrt() * noise


class TextDDPM(torch.nn.Module):
    """The UNet and the text encoder of a text DDPM, trained together (attribute names are the
    checkpoints' state-dict keys: ``unet.*``, ``text_encoder.*``)."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, x_t, t, input_ids, prompt_ids):
        """``input_ids``: every prompt's tokens ``[P, L]``; ``prompt_ids``: each image's prompt."""
        uniq, inverse = torch.unique(prompt_ids, return_inverse=True)
        emb = self.text_encoder(input_ids[uniq])[0]  # [U, L, E]: each distinct prompt of the batch once
        return self.unet(x_t, t, encoder_hidden_states=emb[inverse]).sample


def export_text_ddpm(ema, tokenizer, scheduler, out_dir, info):
    """Write the pipeline-style folder (unet/, text_encoder/, tokenizer/, scheduler/,
    train_info.json) into ``out_dir.tmp``, then move it in file by file."""
    import json
    import shutil

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ema.unet.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
    ema.text_encoder.save_pretrained(os.path.join(tmp, "text_encoder"), safe_serialization=True)
    tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
    with open(os.path.join(tmp, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    for dirpath, _, files in os.walk(tmp):
        dest = os.path.normpath(os.path.join(out_dir, os.path.relpath(dirpath, tmp)))
        os.makedirs(dest, exist_ok=True)
        for name in files:
            os.replace(os.path.join(dirpath, name), os.path.join(dest, name))
            os.chmod(os.path.join(dest, name), 0o644)
    shutil.rmtree(tmp, ignore_errors=True)


def train_classifier_loop(model, opt, gen, args, n, loss_of, evaluate, desc):
    """The classifier scripts' loop: resume from ``args.ckpt`` (unless ``args.no_resume``),
    ``args.steps`` AdamW steps on batches of ``args.batch`` of the ``n`` training items
    (``loss_of(idx)``: the batch's loss), the lr of ``lr_at`` (to 0), ``evaluate(step, loss,
    elapsed)`` every ``args.eval_every`` steps, an atomic checkpoint every ``args.ckpt_every``.
    Returns the training seconds (over resumed runs)."""
    import sys
    import time

    from tqdm import tqdm

    step, elapsed = 0, 0.0
    if not args.no_resume and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        step, elapsed = ck["step"], ck.get("elapsed", 0.0)
        print(f"resumed from {args.ckpt} at step {step}", flush=True)
    batches = batch_indices(n, args.batch, gen)
    model.train()
    t0 = time.time() - elapsed
    pbar = tqdm(total=args.steps, initial=step, desc=desc, mininterval=10, file=sys.stdout)
    while step < args.steps:
        idx = next(batches)
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.schedule, min_ratio=0.0)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        elapsed = time.time() - t0
        pbar.update(1)
        if step % 50 == 0:
            pbar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, loss.item(), elapsed)
            sys.stdout.flush()
        if step % args.ckpt_every == 0 or step == args.steps:
            atomic_save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                             torch_rng=torch.get_rng_state(), step=step, elapsed=elapsed, args=vars(args)), args.ckpt)
    pbar.close()
    return elapsed


def save_weights(model, path, metadata):
    """The model's state dict as safetensors at ``path`` (atomically, mode 0644)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, path + ".tmp", metadata={"format": "pt", **metadata})
    os.replace(path + ".tmp", path)
    os.chmod(path, 0o644)
