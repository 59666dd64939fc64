"""``unlearn-fast``: the command line.

    unlearn-fast train --config run.toml --method ru --forget 3 --max-steps 200 \\
        --output-dir runs/ru-3 --resume latest --seed 0

Every ``TrainConfig`` key is also a flag (``max_steps`` -> ``--max-steps``); flags override
the config file, which overrides the defaults. Lists take several values or commas
(``--forget 3 5`` or ``--forget 3,5``; ``--forget @prompts.txt`` reads one prompt a line),
``--method-kwarg bound=0.05`` (repeatable) sets one
entry of ``method_kwargs`` (the value is read as a TOML value, else as a string), and
``none`` unsets an optional key (``--source none``).

Subcommands live in ``SUBCOMMANDS``: name -> (add_arguments(parser), run(args) -> exit code).
``demo``, ``continual`` and ``eval`` are added there by their own modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Callable, Literal, Union

from .asset_files import MissingAssetError
from .config import ConfigError, TrainConfig, load_train_config

# --- train -----------------------------------------------------------------------------------

#: short descriptions shown by ``--help`` for the most used keys
_HELP = {
    "method": "unlearning method: ru, fu, lu, esd, ablation, neggrad, finetune",
    "forget": "conditions to unlearn (class ids/names or prompts)",
    "retain": "conditions to keep (default for a class model: every other class)",
    "model_path": "a diffusers folder (default: the embedded MNIST class DDPM)",
    "max_steps": "optimizer steps",
    "output_dir": "checkpoints, metrics.jsonl and final/ go here",
    "resume": "'latest' or a checkpoint folder",
    "seed": "random seed",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(tp):
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return tp, False


def _scalar_parser(tp, optional: bool) -> Callable[[str], object]:
    """A string -> value converter for one scalar type (the config validates the result)."""

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is int:
            try:
                return int(text)
            except ValueError:
                return text  # the config names the key and the expected type
        if tp is float:
            try:
                return float(text)
            except ValueError:
                return text
        if typing.get_origin(tp) is Union:  # str | int: ints stay ints
            try:
                return int(text)
            except ValueError:
                return text
        return text

    return parse


def _split_list(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


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
            out.extend(_split_list([v]))
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
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "method_kwargs":
            continue
        tp, optional = _strip_optional(hints[f.name])
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=_HELP.get(f.name))
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is list:
            parser.add_argument(_flag(f.name), nargs="+", metavar=f.name.upper(), **kwargs)
        elif origin is Literal:
            choices = list(typing.get_args(tp)) + (["none"] if optional else [])
            parser.add_argument(_flag(f.name), choices=choices, **kwargs)
        else:
            parser.add_argument(_flag(f.name), type=_scalar_parser(tp, optional), metavar=f.name.upper(), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    hints = typing.get_type_hints(TrainConfig)
    overrides = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "method_kwargs" or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        tp, optional = _strip_optional(hints[f.name])
        if typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            parse = _scalar_parser(item, False)
            if f.name in ("forget", "retain"):  # condition names: keep ids as written ("3"); @FILE
                value = read_prompt_list(value, _flag(f.name))
            else:
                value = [parse(v) for v in _split_list(value)]
        elif value == "none" and optional:
            value = None
        overrides[f.name] = value
    kw = {}
    for item in args.method_kwarg:
        if "=" not in item:
            raise ConfigError(f"--method-kwarg: expected KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        kw[key.strip()] = _parse_value(text.strip())
    if kw:
        overrides["method_kwargs"] = kw
    return load_train_config(args.config, overrides)


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
    parser.add_argument("--forget", type=int, nargs="+", default=[3], help="digit(s) to unlearn (default: 3)")
    parser.add_argument("--method", default="ru", help="ru (default), esd, lu, fu, ablation, neggrad, finetune")
    parser.add_argument("--model", default="class", choices=["class", "text"],
                        help="the embedded model: class (class-conditional, default) or text (erases the digit's prompt)")
    parser.add_argument("--steps", type=int, default=None, help="unlearning steps (default: the demo's)")
    parser.add_argument("--per-class", type=int, default=None, help="evaluation samples per class")
    parser.add_argument("--report", default=None, help="JSON report path (default: OUT/report.json)")
    parser.add_argument("--out", default="demo_out", help="folder for the grid, the run and the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(forget=args.forget, method=args.method, model=args.model, seed=args.seed, out=args.out,
                            report=args.report, threads=args.threads)
    if args.steps is not None:
        settings.steps = args.steps
    if args.per_class is not None:
        settings.eval.per_class = args.per_class
    try:
        run_demo(settings)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    return 0


def add_continual_arguments(parser: argparse.ArgumentParser) -> None:
    from .continual import CONTINUAL_METHODS

    parser.add_argument("--sequence", required=True, help="the requests, in order: classes to erase (e.g. 3,8,5,1,9)")
    parser.add_argument("--method", default="lacu",
                        help=f"one or several of {', '.join(CONTINUAL_METHODS)}, comma separated (default: lacu)")
    parser.add_argument("--model", default="class", choices=["class", "text"],
                        help="the embedded model: class (default) or text (each request erases the digit's prompt)")
    parser.add_argument("--model-path", default=None,
                        help="a model folder of that kind (default: the embedded one)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per request (default: 100)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--per-class", type=int, default=50, help="evaluation samples per class (default: 50)")
    parser.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the evaluation sampler")
    parser.add_argument("--lam-unl", type=float, default=None, help="LACU: weight of the mapping term")
    parser.add_argument("--lam-pres", type=float, default=None, help="LACU: weight of the replay term (default 8)")
    parser.add_argument("--lam-reg", type=float, default=None, help="LACU (and l2): weight of the L2 anchor")
    parser.add_argument("--replay", type=int, default=None, help="LACU: nearest retained classes replayed")
    parser.add_argument("--eta", type=float, default=None, help="LACU: push-away weight of the mapping (0: plain)")
    parser.add_argument("--target-check", default=None, choices=["detector", "none"],
                        help="LACU: skip a near mapping target whose own samples the concept detector reads as "
                             "the forgotten class (detector, default) or take the nearest admissible one (none)")
    parser.add_argument("--max-confusion", type=float, default=None,
                        help="LACU: the detector's largest share of a target's samples read as the forgotten class "
                             "(default 0.025)")
    parser.add_argument("--report", default=None, help="JSON report path (default: OUT/report.json)")
    parser.add_argument("--out", default="continual_out", help="folder for the runs, table.md and continual.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run_continual_command(args: argparse.Namespace) -> int:
    from .continual import ContinualSettings, LacuSettings, run_continual
    from .eval.metrics import EvalSettings
    from .training import TrainingInterrupted

    try:
        sequence = [int(c) for c in _split_list([args.sequence])]
    except ValueError:
        raise ConfigError(f"--sequence: expected class ids separated by commas, got {args.sequence!r}") from None
    lacu = LacuSettings()
    for key in ("lam_unl", "lam_pres", "lam_reg", "replay", "eta", "target_check", "max_confusion"):
        if getattr(args, key) is not None:
            setattr(lacu, key, getattr(args, key))
    try:
        settings = ContinualSettings(
            sequence=sequence, methods=_split_list([args.method]), model=args.model, model_path=args.model_path,
            steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=args.out, report=args.report,
            eval=EvalSettings(per_class=args.per_class, steps=args.eval_steps, guidance=1.0), lacu=lacu,
            threads=args.threads)
        report = run_continual(settings)
    except TrainingInterrupted as e:
        print(f"unlearn-fast continual: {e.args[0].split('; resume with')[0]}; run the same command again to "
              "continue (finished requests are kept, the interrupted one resumes from its checkpoint)",
              file=sys.stderr)
        return 128 + e.signum
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    from .continual import markdown_table

    print()
    print(markdown_table(report))
    print(f"\nreport: {settings.report or settings.out + '/report.json'}\ntable:  {settings.out}/table.md\n"
          f"plot:   {settings.out}/continual.png")
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
                  "a sequence of unlearning requests (lacu, naive, l2, simultaneous), evaluated after each"),
    "sample": (*_lazy(".sample_grid", "add_sample_arguments", "run_sample_command"),
               "a PNG grid of a model's samples, one row per prompt (--compare: a second model side by side)"),
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
