"""LoRA weights in the format users load them with: diffusers' for pipelines that have a LoRA loader.

``save_lora(peft_module, folder, family)`` writes ``pytorch_lora_weights.safetensors`` (the
denoiser's adapters under ``unet.``/``transformer.``, with their LoRA config as metadata)
through the family's pipeline class ``save_lora_weights``, so
``pipe.load_lora_weights(folder)`` applies it to the original pipeline. Families without a
diffusers LoRA loader (class UNets, DiT) get peft's layout (``adapter_config.json`` +
``adapter_model.safetensors``, for ``PeftModel.from_pretrained``).
"""

from __future__ import annotations

from pathlib import Path

#: family -> (pipeline class, keyword of its save_lora_weights for the denoiser's layers)
LORA_LOADERS = {
    "sd": ("StableDiffusionPipeline", "unet"),
    "sdxl": ("StableDiffusionXLPipeline", "unet"),
    "sd3": ("StableDiffusion3Pipeline", "transformer"),
    "flux": ("FluxPipeline", "transformer"),
}
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"


def save_lora(module, folder: Path, family: str) -> None:
    """Write the adapters of the peft-wrapped ``module`` to ``folder`` (see the module docstring)."""
    if family not in LORA_LOADERS:
        module.save_pretrained(str(folder))
        return
    import diffusers
    from peft.utils import get_peft_model_state_dict

    pipeline_name, part = LORA_LOADERS[family]
    prefix = "base_model.model."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v.detach().cpu().contiguous()
             for k, v in get_peft_model_state_dict(module).items()}
    config = module.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    getattr(diffusers, pipeline_name).save_lora_weights(
        str(folder), safe_serialization=True,
        **{f"{part}_lora_layers": state, f"{part}_lora_adapter_metadata": config})
