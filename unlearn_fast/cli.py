"""``unlearn-fast``: the command line.

    unlearn-fast train --config run.toml --method ru --forget 3 --max-steps 200 \\
        --output-dir runs/ru-3 --resume latest --seed 0

Every ``TrainConfig`` key is also a flag (``max_steps`` -> ``--max-steps``); flags override
the config file, which overrides the defaults. Lists take several values or commas
(``--forget 3 5`` or ``--forget 3,5``; ``--forget @prompts.txt`` reads one prompt a line),
``--method-kwarg bound=0.05`` (repeatable) sets one
entry of ``method_kwargs`` (the value is read as a TOML value, else as a string),
``--anchor-map "a striped star=a star"`` (repeatable) one entry of ``anchor_map``, and
``none`` unsets an optional key (``--source none``).

Subcommands live in ``SUBCOMMANDS``: name -> (add_arguments(parser), run(args) -> exit code).
``demo``, ``continual`` and ``eval`` are added there by their own modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .asset_files import MissingAssetError
from .config import ConfigError, TrainConfig, load_train_config
from .flags import add_dataclass_arguments, dataclass_overrides, flag, split_list

# --- train -----------------------------------------------------------------------------------

#: short descriptions shown by ``--help`` for the most used keys
_HELP = {
    "method": "unlearning method: ru, fu, lu, esd, ablation, neggrad, finetune",
    "forget": "conditions to unlearn (class ids/names or prompts)",
    "retain": "conditions to keep (default for a class model: every other class)",
    "model_path": "a diffusers folder (default: the embedded MNIST class DDPM)",
    "teacher_path": "a model folder whose frozen predictions are the teacher (default: a copy of model_path)",
    "max_steps": "optimizer steps",
    "output_dir": "checkpoints, metrics.jsonl and final/ go here",
    "resume": "'latest' or a checkpoint folder",
    "seed": "random seed",
}


def read_prompt_list(values: list[str], key: str) -> list[str]:
    """Condition names from flag values: ``@FILE`` reads one prompt a line (blank lines and
    lines starting with ``#`` skipped; commas kept), anything else splits on commas."""
    out = []
    for v in values:
        if v.startswith("@"):
            path = v[1:]
            if not os.path.isfile(path):
                raise ConfigError(f"{key}: no such prompt file: {path!r} (@FILE reads one prompt a line)")
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
            prompts = [line for line in lines if line and not line.startswith("#")]
            if not prompts:
                raise ConfigError(f"{key}: the prompt file {path!r} has no prompts")
            out.extend(prompts)
        else:
            out.extend(split_list([v]))
    return out


def _parse_value(text: str):
    """A TOML literal (``0.05``, ``true``, ``"x"``, ``[1, 2]``) or else the plain string."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a .toml or .yaml file of TrainConfig keys")
    parser.add_argument("--method-kwarg", action="append", default=[], metavar="KEY=VALUE",
                        help="one entry of method_kwargs (repeatable), e.g. bound=0.05")
    parser.add_argument("--anchor-map", action="append", default=[], metavar="FORGET=ANCHOR",
                        help="a forget condition's own anchor (repeatable), e.g. 'a striped star=a star'")
    add_dataclass_arguments(parser, TrainConfig, skip=_DICT_KEYS, help=_HELP)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    # condition names: keep ids as written ("3"); @FILE reads a prompt list
    prompts = {key: (lambda values, key=key: read_prompt_list(values, flag(key))) for key in ("forget", "retain")}
    overrides = dataclass_overrides(args, TrainConfig, skip=_DICT_KEYS, list_parsers=prompts)
    kw = {key: _parse_value(text) for key, text in _pairs(args.method_kwarg, "--method-kwarg", "KEY=VALUE")}
    if kw:
        overrides["method_kwargs"] = kw
    anchors = dict(_pairs(args.anchor_map, "--anchor-map", "FORGET=ANCHOR"))
    if anchors:
        overrides["anchor_map"] = anchors
    return load_train_config(args.config, overrides)


#: dict keys of TrainConfig, set by their own repeatable KEY=VALUE flags
_DICT_KEYS = ("method_kwargs", "anchor_map")


def _pairs(items: list[str], name: str, form: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` items as stripped pairs; ``ConfigError`` naming the flag otherwise."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{name}: expected {form}, got {item!r}")
        key, text = item.split("=", 1)
        out.append((key.strip(), text.strip()))
    return out


def run_train(args: argparse.Namespace) -> int:
    from .training import CheckpointWriteError, NonFiniteError, TrainingInterrupted, train

    config = config_from_args(args)
    try:
        result = train(config)
    except TrainingInterrupted as e:  # 128 + signal, as a shell reports a process the signal ended
        print(f"unlearn-fast train: {e}", file=sys.stderr)
        return 128 + e.signum
    except (NonFiniteError, CheckpointWriteError) as e:
        print(f"unlearn-fast train: error: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as e:  # a setting the model or data reject
        print(f"unlearn-fast train: error: {e}", file=sys.stderr)
        return 2
    print(f"trained {result.step} steps; final model: {result.final_dir}")
    return 0


# --- the subcommand table ---------------------------------------------------------------------

#: name -> (add_arguments(parser), run(args) -> exit code, help). ``demo``, ``continual`` and
#: ``eval`` are registered here by their modules.
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--forget", nargs="+", default=["3"],
                        help="digit(s) to unlearn (default: 3); --model shapes: an object, a style or "
                             "'<style> <object>' (e.g. striped, star, 'hollow star')")
    parser.add_argument("--method", default="ru", help="ru (default), esd, lu, fu, ablation, neggrad, finetune")
    parser.add_argument("--model", default="class", choices=["class", "text", "shapes"],
                        help="the embedded model: class (class-conditional, default), text (erases the digit's "
                             "prompt) or shapes (objects drawn in styles)")
    parser.add_argument("--steps", type=int, default=None, help="unlearning steps (default: the demo's)")
    parser.add_argument("--per-class", type=int, default=None, help="evaluation samples per class")
    parser.add_argument("--report", default=None, help="JSON report path (default: OUT/report.json)")
    parser.add_argument("--out", default="demo_out", help="folder for the grid, the run and the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--adversarial", action="store_true",
                        help="also erase under the conditioning an inner inversion attack finds (docs/attacks.md)")
    parser.add_argument("--no-eval-cache", dest="eval_cache", action="store_false",
                        help="--model shapes: evaluate the original model again instead of reading its evaluation "
                             "from the cache ($UNLEARN_FAST_CACHE, default ~/.cache/unlearn_fast)")
    parser.add_argument("--shapes-data", default="pool", choices=["pool", "images"],
                        help="--model shapes: training samples: the frozen model's own, 16 per prompt (pool, "
                             "default), or the benchmark's generated images (images)")
    parser.add_argument("--map-to", default="nearest",
                        help="--model shapes: anchor the concept's prompts on this concept of its kind ('a striped "
                             "star' -> 'a dotted star'): nearest (default: of the candidates the "
                             "detector does not confuse with it, the one the model draws most reliably), none (each prompt without the erased part, "
                             "'a star'), or a concept (dotted, heart, 'dotted star')")


def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(forget=args.forget, method=args.method, model=args.model, seed=args.seed, out=args.out,
                            report=args.report, threads=args.threads,
                            adversarial=args.adversarial, eval_cache=args.eval_cache, map_to=args.map_to,
                            shapes_data=args.shapes_data)
    if args.steps is not None:
        settings.steps = args.steps
    if args.per_class is not None:
        settings.eval.per_class = args.per_class
        if args.model == "shapes":
            from .eval.shapes_metrics import ShapesEvalSettings

            settings.shapes_eval = ShapesEvalSettings(per_combo=args.per_class)
    try:
        run_demo(settings)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    return 0


#: settings fields with no flag on ``continual``: the sampler's description, and the shapes
#: evaluator's paraphrase UA, which a continual step does not compute
CONTINUAL_SKIP = ("sampler", "paraphrase_samples")


def add_continual_arguments(parser: argparse.ArgumentParser) -> None:
    from .continual import ContinualSettings

    add_dataclass_arguments(parser, ContinualSettings, skip=CONTINUAL_SKIP, names={"methods": "method"})


def run_continual_command(args: argparse.Namespace) -> int:
    from .continual import ContinualSettings, markdown_table, run_continual
    from .flags import build_dataclass
    from .training import TrainingInterrupted

    def sequence(values):  # digits stay ints; a shapes concept is text (the settings check either)
        return [int(c) if c.lstrip("-").isdigit() else c for c in split_list(values)]

    overrides = dataclass_overrides(args, ContinualSettings, skip=CONTINUAL_SKIP, list_parsers={"sequence": sequence})
    try:
        settings = build_dataclass(ContinualSettings, overrides)
        report = run_continual(settings)
    except TrainingInterrupted as e:
        print(f"unlearn-fast continual: {e.args[0].split('; resume with')[0]}; run the same command again to "
              "continue (finished requests are kept, the interrupted one resumes from its checkpoint)",
              file=sys.stderr)
        return 128 + e.signum
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    print()
    print(markdown_table(report))
    print(f"\nreport: {settings.report or settings.out + '/report.json'}\ntable:  {settings.out}/table.md\n"
          f"plot:   {settings.out}/continual.png")
    return 0


def add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    from .attacks import AttackSettings

    add_dataclass_arguments(parser, AttackSettings)


def run_attack_command(args: argparse.Namespace) -> int:
    from .attacks import AttackSettings, run_attack
    from .flags import build_dataclass

    try:
        run_attack(build_dataclass(AttackSettings, dataclass_overrides(args, AttackSettings)))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    return 0


def _lazy(module: str, add: str, run: str):
    """``(add_arguments, run)`` of a subcommand whose module is imported only when it is used;
    its ``ValueError``s become one ``error:`` line (exit 2)."""
    import importlib

    def add_arguments(parser):
        getattr(importlib.import_module(module, __package__), add)(parser)

    def run_command(args):
        try:
            return getattr(importlib.import_module(module, __package__), run)(args)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from e

    return add_arguments, run_command


SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "train": (add_train_arguments, run_train, "run an unlearning method (TrainConfig from --config and flags)"),
    "demo": (add_demo_arguments, run_demo_command, "unlearn a digit from the embedded model, evaluate before/after"),
    "continual": (add_continual_arguments, run_continual_command,
                  "a sequence of unlearning requests (lacu, constrained, naive, l2, simultaneous), evaluated after each"),
    "sample": (*_lazy(".sample_grid", "add_sample_arguments", "run_sample_command"),
               "a PNG grid of a model's samples, one row per prompt (--compare: a second model side by side)"),
    "attack": (add_attack_arguments, run_attack_command,
               "attack a model: bring an erased concept back (embedding, inversion, relearn, resurgence)"),
    "eval": (*_lazy(".eval.command", "add_eval_arguments", "run_eval_command"),
             "the embedded evaluator's metrics on a model trained from an embedded one"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn-fast", description="Unlearning in diffusion models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, run, _ = SUBCOMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except (ConfigError, MissingAssetError) as e:  # a bad setting; an incomplete installation
        parser.exit(2, f"unlearn-fast {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
