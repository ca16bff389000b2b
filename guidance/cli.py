"""The `guidance` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import GuidanceError

EXAMPLE_SETTINGS = """\
model: digits            # default model of every setting (digits, digits-no-dropout, or a folder)
samples: 500
steps: 25
settings:
  - name: cfg
    guidance: {rule: cfg}
    scales: [1, 3, 7.5]  # one setting per scale
  - name: apg
    guidance: {rule: {name: apg, norm_threshold: 1.0}}
    scales: [7.5, 15]
"""


def _scales(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,3,7.5, got {text!r}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GuidanceError(f"No settings file at '{path}'. Pass an existing YAML file, for example:\n"
                            f"{EXAMPLE_SETTINGS}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise GuidanceError(f"'{path}' is not valid YAML: {str(error).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise GuidanceError(f"'{path}' must hold a mapping with `settings:` (or a `guidance:` section).")
    return data


def evaluation_settings(data: dict[str, Any], source: str, scales: list[float] | None) -> list[Any]:
    """Settings from a file's mapping: `settings:` (each with `guidance:` and optional `scales:`, `steps`, `eta`,
    `model`, `name`) or a single `guidance:` section."""
    from .pipelines.evaluation import Setting

    entries = data.get("settings", [{"name": Path(source).stem, "guidance": data.get("guidance") or {}}])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise GuidanceError(f"In '{source}': `settings` must be a list of mappings with a `guidance:` section.")
    settings = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {"name", "guidance", "scales", "steps", "eta", "model", "method", "unconditional"}
        if unknown:
            raise GuidanceError(f"In '{source}', settings[{i}]: unknown keys {sorted(unknown)}; allowed: name, "
                                "guidance, scales, steps, eta, model, method, unconditional.")
        spec = dict(entry.get("guidance") or {})
        name = str(entry.get("name", f"setting {i}"))
        common = {"steps": int(entry.get("steps", data.get("steps", 25))), "eta": float(entry.get("eta", 0.0)),
                  "model": str(entry.get("model", data.get("model", "digits"))), "method": entry.get("method", name),
                  "unconditional": bool(entry.get("unconditional", False))}
        for scale in entry.get("scales") or scales or [spec.get("scale")]:
            scaled = spec if scale is None else {**spec, "scale": scale}
            label = name if scale is None else f"{name} w={scale:g}"
            try:
                settings.append(Setting(label, scaled, **common))
            except GuidanceError as error:
                raise GuidanceError(f"In '{source}', settings[{i}] ({name}): {error}") from None
    return settings


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipelines.evaluation import Setting, evaluate
    from .pipelines.report import markdown_table

    settings: list[Setting] = []
    samples = args.samples
    for path in args.config or []:
        data = _read_yaml(path)
        samples = samples or data.get("samples")
        settings += evaluation_settings(data, str(path), args.scales)
    if not settings:
        settings = [Setting(f"cfg w={w:g}", {"scale": w}, model=args.model) for w in (args.scales or [1.0, 3.0, 7.5])]
    if args.out is not None and args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise GuidanceError(f"The output folder '{args.out}' is not empty. Choose another --out or pass --overwrite.")
    rows = evaluate(settings, samples=samples or 500, seed=args.seed, out=args.out, progress=not args.no_progress)
    print(markdown_table(rows), end="")
    if args.out is not None:
        print(f"\nWrote {args.out}/results.md, results.csv, grids/ and plots/.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .composition import AXES
    from .registry import describe_fields

    for axis, registry in AXES.items():
        print(f"{axis}s:")
        for cls in registry.classes():
            print(f"  {cls.name:<16} {cls.summary}")
            print(f"  {'':<16} parameters: {describe_fields(cls)}")
            if cls.paper:
                print(f"  {'':<16} paper: {cls.paper}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guidance", description="Classifier-free-guidance methods on diffusers "
                                     "pipelines: generate, evaluate and compare.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    evaluate = sub.add_parser(
        "evaluate", help="measure guidance settings on a class-conditional model (default: the bundled digits)",
        description="Run guidance settings on the same labels and noise and report accuracy, Fréchet distance, "
                    "precision/recall, saturation, diversity, denoiser rows and time.",
        epilog="Settings file example:\n" + EXAMPLE_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("-c", "--config", type=Path, action="append", help="YAML settings file (repeatable)")
    evaluate.add_argument("--model", default="digits", help="model when no settings file is given")
    evaluate.add_argument("--scales", type=_scales, help="comma-separated scales for every setting, e.g. 1,3,7.5")
    evaluate.add_argument("--samples", type=int, help="samples per setting (default 500)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", type=Path, help="folder for results.md/csv, grids and plots")
    evaluate.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=cmd_evaluate)
    listing = sub.add_parser("list", help="every strategy by axis with its parameters, defaults and paper",
                             description="Every strategy of the four axes (rule, reference, schedule, policy).")
    listing.set_defaults(handler=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except GuidanceError as error:
        print(f"guidance {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
