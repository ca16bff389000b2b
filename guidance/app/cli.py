"""The `guidance` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import OUT_OF_MEMORY, GuidanceError, shorten

EXAMPLE_SETTINGS = """\
model: digits            # default model of every setting (digits, digits-no-dropout, shapes-sd, shapes-flow, a folder)
samples: 500
steps: 25
settings:
  - name: cfg
    guidance: {rule: cfg}
    scales: [1, 3, 7.5]  # one setting per scale
  - name: apg
    guidance: {rule: {name: apg, norm_threshold: 1.0}}
    scales: [7.5, 15]
  - name: nag on the text model, negative prompt "red"
    model: shapes-sd
    negative_prompt: red
    guidance: {attention: {name: nag, scale: 3}}
"""


def _scales(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,3,7.5, got {shorten(text)}"
                                         ) from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import MAX_SAMPLES, MIN_SAMPLES, read_evaluation
    from .evaluate import Setting, evaluate, settings_from
    from .report import COLUMNS, markdown_table

    settings: list[Setting] = []
    samples = args.samples
    if samples is not None and not MIN_SAMPLES <= samples <= MAX_SAMPLES:
        raise GuidanceError(f"--samples {samples}: give {MIN_SAMPLES} to {MAX_SAMPLES} (the metrics need two samples "
                            "per class, and hold an N × N distance matrix).")
    for path in args.config or []:
        loaded = read_evaluation(path)
        samples = samples or loaded.samples
        settings += settings_from(loaded, str(path), args.scales)
    if not settings:
        settings = [Setting(f"cfg w={w:g}", {"scale": w}, model=args.model) for w in (args.scales or [1.0, 3.0, 7.5])]
    if args.out is not None and args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise GuidanceError(f"The output folder '{args.out}' is not empty. Choose another --out or pass --overwrite.")
    rows = evaluate(settings, samples=samples or 500, seed=args.seed, out=args.out, progress=not args.no_progress)
    print(markdown_table(rows, COLUMNS), end="")
    if args.out is not None:
        print(f"\nWrote {args.out}/results.md, results.csv, grids/ and plots/.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import describe_fields
    from ..spec import AXES

    headings = {"policy": "policies", "attention": "attention guidance (optional: inside the conditional pass)"}
    for axis, registry in AXES.items():
        print(f"{headings.get(axis, axis + 's')}:")
        for cls in registry.classes():
            print(f"  {cls.name:<16} {cls.summary}")
            print(f"  {'':<16} parameters: {describe_fields(cls)}")
            if cls.paper:
                print(f"  {'':<16} paper: {cls.paper}")
            if getattr(cls, "default_term_scale", None) is not None:
                print(f"  {'':<16} as a term: default scale s = {cls.default_term_scale}")
            guider = f"no: {cls.guider_refusal}" if cls.guider_refusal else "yes"
            print(f"  {'':<16} modular guider (guidance.as_guider): {guider}")
        print()
    print("terms:\n  guidance: {terms: [{reference, scale, rule, schedule}, ...]} adds rule(c, r, 1 + s) − c per "
          "term to the main term\n  (docs/CONVENTIONS.md §20); e.g. terms: [{reference: {name: pag, layers: [mid]}, "
          "scale: 3}]")
    return 0


DEFAULT_RUN: dict[str, Any] = {"model": {"path": "digits"}, "guidance": {"scale": 3.0}}
DEFAULT_TEXT_RUN: dict[str, Any] = {"model": {"path": "shapes-sd"}, "guidance": {"scale": 3.0}}


def _run_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The raw config mapping (file, or the bundled default: digits, or shapes-sd when --prompt is given) with
    --prompt and --set applied, and its source name."""
    from .config import apply_sets, read

    prompts = getattr(args, "prompt", None)
    default, name = (DEFAULT_TEXT_RUN, "shapes-sd") if prompts else (DEFAULT_RUN, "digits")
    data = read(args.config) if args.config else dict(default)
    if prompts:
        data = {**{k: v for k, v in data.items() if k != "class_labels"}, "prompts": prompts}
    return apply_sets(data, args.set or []), str(args.config or f"<default {name} config>")


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import validate
    from .generate import generate, regenerate

    if args.from_image is not None:
        if args.config or args.set or args.prompt:
            raise GuidanceError("--from-image takes the whole config from the image; drop -c/--set/--prompt.")
        path = regenerate(args.from_image, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                          allow_pickle=args.allow_pickle)
        print(f"Regenerated {args.from_image} as {path}")
        return 0
    data, source = _run_config(args)
    config = validate(data, source)
    written = generate(config, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                       allow_pickle=args.allow_pickle)
    kind = "images" if config.sampler.frames is None else "videos"
    print(f"Wrote {len(written)} {kind} to {written[0].parent if written else args.out or config.output.dir}")
    return 0


def _sweep_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The sweep's command line as each launched process runs it: the same options, without --num-processes."""
    argv = ["sweep", f"--seeds={args.seeds}", f"--out={out}"]
    argv += [f"--config={args.config}"] if args.config else []
    argv += [f"--set={entry}" for entry in args.set or []] + [f"--grid={entry}" for entry in args.grid or []]
    flags = {"--overwrite": args.overwrite, "--no-progress": args.no_progress, "--allow-pickle": args.allow_pickle}
    return argv + [flag for flag, on in flags.items() if on]


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import check, launch, parse_grid, parse_seeds, require_launcher, sweep

    data, source = _run_config(args)
    axes, seeds = parse_grid(args.grid or []), parse_seeds(args.seeds)
    out = Path(args.out or Path(data.get("output", {}).get("dir", "outputs")) / "sweep")
    if args.num_processes != 1:
        require_launcher(args.num_processes)
        check(data, axes, seeds, out, source, args.overwrite)  # errors once, before any process starts
        return launch(args.num_processes, _sweep_argv(args, out))
    grid = sweep(data, axes, seeds, out, source, overwrite=args.overwrite, progress=not args.no_progress,
                 allow_pickle=args.allow_pickle)
    if grid is not None:
        print(f"Wrote {grid} and {grid.parent / 'sweep.json'}")
    return 0


def cmd_fit_linear_ag(args: argparse.Namespace) -> int:
    from ..pipelines.api import fit_linear_ag
    from .config import validate
    from .generate import call_kwargs
    from .loading import load_model

    data, source = _run_config(args)
    config = validate(data, source)
    if args.out.exists() and not args.overwrite:
        raise GuidanceError(f"'{args.out}' exists. Pass --overwrite or choose another --out.")
    pipe = load_model(config.model, config.sampler.scheduler, args.allow_pickle)
    kwargs = call_kwargs(pipe, config, config.items(), config.sampler.seed)
    path = fit_linear_ag(pipe, config.guidance, args.out, guided_fraction=args.guided_fraction,
                         real_every=args.real_every, **{**kwargs, "output_type": "latent"})
    print(f"Wrote LinearAG coefficients for {config.sampler.steps} steps to {path}. Use them with "
          f"policy: {{name: linear_ag, coefficients: {path}}}.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from . import bench
    from .report import markdown_table

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise GuidanceError(f"--device {args.device}: no CUDA device is visible. Use --device cpu.")
    unknown = [v for v in args.variants or [] if v not in bench.VARIANTS]
    if unknown:
        raise GuidanceError(f"Unknown --variants {unknown}; choose from: {', '.join(bench.VARIANTS)}.")
    small = [f"--{k} {v}" for k, v in (("steps", args.steps), ("repeats", args.repeats), ("threads", args.threads),
                                       ("samples", args.samples)) if v < 1]
    if small:
        raise GuidanceError(f"{', '.join(small)}: give 1 or more.")
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise GuidanceError(f"'{args.json}' exists. Pass --overwrite or choose another --json file.")
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        if not args.json.parent.is_dir() or not os.access(args.json.parent, os.W_OK):
            raise GuidanceError(f"Cannot write '{args.json}': '{args.json.parent}' is not a writable folder. "
                                "Choose another --json.")
    torch.set_num_threads(args.threads)
    print(f"machine: {bench.machine(args.device)}", flush=True)
    if args.kind == "saving":
        rows = bench.saving(args.samples, progress=not args.no_progress)
    else:
        runner = bench.Bench(args.pipeline, args.steps, args.device, args.dtype)
        if args.compile:
            runner.denoiser.compile()
        elif runner.device.type == "cpu" or args.split:
            runner.time_denoiser()
        if args.kind == "overhead":
            rows = bench.time_variants(runner, args.repeats, args.variants)
        elif args.kind == "memory":
            rows = bench.memory_variants(runner, args.repeats, args.variants)
        elif args.kind == "syncs":
            rows = bench.sync_variants(runner, args.steps, args.variants)
        elif args.kind == "flops":
            rows = bench.flop_variants(runner, args.variants)
        else:
            rows = bench.numerics(runner, variants=args.variants)
    print(markdown_table(rows), end="")
    if args.json is not None:
        args.json.write_text(json.dumps({"command": shlex.join(["guidance", *args.argv]), "machine":
                                         bench.machine(args.device), "rows": rows}, indent=1))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import read, validate

    failed = 0
    for path in args.files:
        try:
            validate(read(path), str(path))
            print(f"{path}: valid")
        except GuidanceError as error:
            print(error, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _add_allow_pickle(command: argparse.ArgumentParser) -> None:
    command.add_argument("--allow-pickle", action="store_true",
                         help="let the model load from pickle weights (.bin, .ckpt), which can run code: only for "
                              "models you trust (default: safetensors only)")


def _add_run_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("-c", "--config", type=Path, help="run config YAML (default: the bundled digits model)")
    command.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                         help="override a config field, e.g. --set guidance.scale=5 (repeatable)")
    command.add_argument("--out", type=Path, help="output folder (default: output.dir of the config)")
    command.add_argument("--overwrite", action="store_true", help="replace existing images")
    _add_allow_pickle(command)
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guidance", description="Classifier-free-guidance methods on diffusers "
                                     "pipelines: generate, evaluate and compare.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = sub.add_parser(
        "generate", help="generate images or videos from a run config (default: the bundled digits model, offline)",
        description="Generate images (PNG) or videos (animated WebP, with sampler.frames on a video pipeline) from a "
                    "run config. Each file carries the full resolved config, its seed and the library versions; "
                    "--from-image regenerates an image or video from them, bit for bit on the same machine.",
        epilog="Example: guidance generate -c configs/digits-apg.yaml --set guidance.scale=10 --out out/")
    _add_run_options(generate)
    generate.add_argument("--prompt", action="append", metavar="TEXT",
                          help="a prompt (repeatable), in place of the config's prompts or class labels; without -c "
                               "the bundled text model shapes-sd")
    generate.add_argument("--from-image", type=Path, metavar="FILE",
                          help="regenerate this image (.png) or video (.webp) from its metadata")
    generate.set_defaults(handler=cmd_generate)
    sweep = sub.add_parser(
        "sweep", help="a grid over config fields × seeds: labelled image grid, per-cell images, resumable",
        description="Generate every combination of --grid values for every seed into OUT/<cell>/seed-<s>/, then a "
                    "labelled OUT/grid.png and OUT/sweep.json. A restarted sweep keeps finished images. Under "
                    "`accelerate launch -m guidance sweep ...` (or torchrun) the processes share the work.",
        epilog="Example: guidance sweep --grid guidance.scale=1,3,7.5 --grid guidance.rule=cfg,apg --seeds 0-3 "
               "--num-processes 2")
    _add_run_options(sweep)
    sweep.add_argument("--grid", action="append", metavar="KEY.PATH=V1,V2", help="a grid axis (repeatable)")
    sweep.add_argument("--seeds", default="0", help="seeds: a range 0-3 or a list 0,5,7 (default 0)")
    sweep.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="split the work over N processes on this machine (one per GPU on CUDA) under accelerate's "
                            "launcher; the images equal a single-process run's (default 1: this process)")
    sweep.set_defaults(handler=cmd_sweep)
    fit = sub.add_parser(
        "fit-linear-ag", help="fit LinearAG coefficients for a model, scheduler and step count",
        description="Record CFG trajectories of the config's run (all its prompts or labels, `sampler.batch` images "
                    "each) and fit LinearAG's per-step least-squares coefficients.",
        epilog="Example: guidance fit-linear-ag -c configs/digits-cfg.yaml --set 'class_labels=[0,1,2,3,4,5,6,7,8,9]' "
               "--out linear-ag.json")
    fit.add_argument("-c", "--config", type=Path, help="run config YAML (default: the bundled digits model)")
    fit.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config field")
    fit.add_argument("--out", type=Path, required=True, help="coefficient file to write (JSON)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing coefficient file")
    fit.add_argument("--guided-fraction", type=float, default=0.5, help="share of the steps that are guided")
    fit.add_argument("--real-every", type=int, default=2, help="evaluate the reference every k-th guided step")
    _add_allow_pickle(fit)
    fit.set_defaults(handler=cmd_fit_linear_ag)
    check = sub.add_parser("validate", help="check run configs: every error with file, field, value and fix",
                           description="Validate run configs without loading any model; exit 1 if one is invalid.")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(handler=cmd_validate)
    evaluate = sub.add_parser(
        "evaluate", help="measure guidance settings on a reference model: the bundled digits (default) or the "
                         "captioned-scene text models shapes-sd and shapes-flow",
        description="Run guidance settings on the same labels (digits) or held-out one-object prompts (text models) "
                    "and the same noise, and report accuracy (text models: every attribute the scene judge reads "
                    "back right), Fréchet distance, precision/recall, saturation, diversity, denoiser rows and "
                    "time.",
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
    bench = sub.add_parser(
        "bench", help="the plugin's overhead, memory and host reads against native CFG; what saving policies save",
        description="overhead: median ms per step of each variant and native diffusers CFG, interleaved repeats. "
                    "memory: peak working memory of one call (CUDA allocator; on the CPU a fresh process per "
                    "measurement). syncs: host reads of device tensors per step and per call. flops: GFLOP per "
                    "step against the baseline (the denoiser work a variant adds, free of timing noise). saving: "
                    "rows, time and quality of adaptive, linear_ag and interval against CFG on the digits model. "
                    "numerics: whether every variant's latents stay finite at w = 7.5 and 100 in --dtype.",
        epilog="Example: guidance bench overhead --pipeline sd15-like --steps 10 --repeats 7")
    bench.add_argument("kind", choices=["overhead", "memory", "syncs", "flops", "saving", "numerics"])
    bench.add_argument("--pipeline", choices=["tiny", "sd15-like", "sd15", "wan-like", "wan-like-t512", "flux-like"],
                       default="sd15-like",
                       help="random-weight pipeline: tiny SD, SD-1.5 blocks at width 64 (CPU), SD-1.5 size (GPU), or "
                            "a Wan-structured video transformer (5-D latents: 17 frames at 256 px; wan-like-t512: "
                            "with Wan's 512 text tokens), or a Flux-structured transformer (NAG's variants only)")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--repeats", type=int, default=7)
    bench.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)")
    bench.add_argument("--variants", type=lambda text: [v.strip() for v in text.split(",")],
                       help="comma-separated variants (default: all; see the table's names)")
    bench.add_argument("--compile", action="store_true", help="compile the UNet in place first (torch.compile)")
    bench.add_argument("--split", action="store_true", help="overhead: also time the denoiser's forward alone "
                       "(always on the CPU; on a GPU it synchronises around each forward)")
    bench.add_argument("--samples", type=int, default=500, help="samples per setting for `saving`")
    bench.add_argument("--json", type=Path, help="also write the rows, command and machine to this JSON file")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(handler=cmd_bench)
    listing = sub.add_parser("list", help="every strategy by axis with its parameters, defaults and paper",
                             description="Every strategy of the four axes (rule, reference, schedule, policy).")
    listing.set_defaults(handler=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.handler(args)
    except GuidanceError as error:
        print(f"guidance {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"guidance {args.command}: interrupted. Finished images are kept; no partial file was written.",
              file=sys.stderr)
        return 130
    except RuntimeError as error:  # torch's OutOfMemoryError (CUDA, or the CPU allocator's)
        if "out of memory" not in str(error).lower():
            raise
        print(f"guidance {args.command}: error: {OUT_OF_MEMORY} ({str(error).splitlines()[0][:200]})",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
