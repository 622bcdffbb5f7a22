"""The command line: every tab's function, plus training and evaluation of the shapes world.

    python -m wordsworlds text "Once upon a time" --max-new-tokens 20 --json
    python -m wordsworlds render "a large red circle on the left" --steps 20 --out red.png
    python -m wordsworlds hybrid "a sunset over the sea" --rounds 3
    python -m wordsworlds evaluate [--hybrid]
    python -m wordsworlds train [--toy] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_text(args) -> int:
    from .text import TextGenerator, TextResult, validate_options, validate_prompt

    prompt = validate_prompt(args.prompt)  # before loading anything
    options = validate_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.top_n)
    generator = TextGenerator.load(preset=args.preset)
    result = TextResult(text="")
    for step in generator.stream(prompt, options, stats=result.stats):
        result.steps.append(step)
        if not args.json:
            print(step.text, end="", flush=True)
    result.text = "".join(s.text for s in result.steps)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        stats = result.stats
        print(f"\n\n[{stats.new_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
              f"first token {stats.time_to_first_token_s:.2f} s, {stats.forward_passes} forward passes]")
    return 0


def cmd_train(args) -> int:
    from .world.train import WEIGHTS_DIR, TrainConfig, train

    config = TrainConfig.toy() if args.toy else TrainConfig()
    if args.seed is not None:
        config.seed = args.seed
    out = Path(args.out) if args.out else WEIGHTS_DIR
    summary = train(config, out=out, run_dir=Path(args.run_dir))
    print(json.dumps({k: summary[k] for k in ("stage_seconds", "this_invocation_s", "recognizer_exact_scene_accuracy")},
                     indent=2))
    from .world.evaluate import format_report

    print(format_report(summary["evaluation"]))
    return 0


def cmd_render(args) -> int:
    from .image import ImageGenerator, StepFrame, validate_render_options
    from .text import validate_prompt

    prompt = validate_prompt(args.prompt)
    options = validate_render_options(args.steps, args.guidance, args.negative_prompt, args.seed, args.scheduler,
                                      args.height, args.width, previews=bool(args.frames))
    if args.frames:
        Path(args.frames).mkdir(parents=True, exist_ok=True)
    for item in ImageGenerator.load(preset=args.preset).stream(prompt, options):
        if isinstance(item, StepFrame):
            if args.frames:
                item.noisy.save(Path(args.frames) / f"step{item.step:03d}_noisy.png")
                item.x0.save(Path(args.frames) / f"step{item.step:03d}_x0.png")
            continue
        item.image.save(args.out)
        for warning in item.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps({"prompt": prompt, "out": args.out, "stats": item.stats.to_dict(),
                              "warnings": item.warnings}, indent=2))
        else:
            stats = item.stats
            print(f"{args.out}: {stats.steps} steps, {stats.unet_evaluations} U-Net evaluations, "
                  f"{stats.mean_step_s * 1000:.1f} ms/step, {stats.total_s:.2f} s")
    return 0


def cmd_hybrid(args) -> int:
    from .hybrid import run_hybrid, validate_hybrid_options
    from .planner import validate_idea

    idea = validate_idea(args.idea)
    options = validate_hybrid_options(args.rounds, not args.no_plan, not args.no_refine, args.steps, args.guidance,
                                      args.seed)
    rounds = []
    for round_ in run_hybrid(idea, options):
        rounds.append(round_.to_dict())
        if not args.json:
            verdict = round_.check
            print(f"round {round_.index}: {round_.action}\n  rendered: {round_.prompt}\n  read: {round_.description}"
                  f"\n  score {verdict.score:.2f} {'PASS' if verdict.passed else 'miss'} {verdict.findings}")
    if args.json:
        print(json.dumps({"idea": idea, "rounds": rounds}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    if args.hybrid:
        from .hybrid_eval import evaluate_hybrid, format_hybrid_report

        report = evaluate_hybrid(steps=args.steps, guidance=args.guidance)
        print(json.dumps(report, indent=2) if args.json else format_hybrid_report(report))
        return 0
    from .world.evaluate import evaluate, format_report

    report = evaluate(args.weights, num_prompts=args.prompts, steps=args.steps, guidance=args.guidance)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wordsworlds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("text", help="generate text token by token with its probabilities")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-n", type=int, default=5, help="candidates reported per token")
    p.add_argument("--seed", type=int)
    p.add_argument("--preset", help="model preset (default: $WORDSWORLDS_PRESET or tiny)")
    p.add_argument("--json", action="store_true", help="print text, stats and per-token probabilities as JSON")
    p.set_defaults(func=cmd_text)

    p = sub.add_parser("render", help="render an image step by step with the diffusion model")
    p.add_argument("prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="dpm++", help="dpm++, ddim, euler, euler-ancestral or ddpm")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--out", default="render.png")
    p.add_argument("--frames", help="folder for every step's noisy-latent and x0 previews")
    p.add_argument("--preset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("hybrid", help="plan, render, describe, check, refine")
    p.add_argument("idea")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-plan", action="store_true")
    p.add_argument("--no-refine", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hybrid)

    p = sub.add_parser("train", help="train the miniature Stable Diffusion and the recognizer")
    p.add_argument("--toy", action="store_true", help="a few steps at toy width (smoke test)")
    p.add_argument("--out", help="diffusers folder to write (default: the shipped weights folder)")
    p.add_argument("--run-dir", default="runs/shapes", help="checkpoints and loss log; rerun to resume")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="GenEval-style pass rates of the miniature model")
    p.add_argument("--weights", help="diffusers folder (default: the shipped weights)")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--hybrid", action="store_true", help="evaluate the hybrid loop over 100 requests instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    from . import embed

    embed.add_cli(sub)
    return parser


def main(argv=None) -> int:
    from .text import InputError
    from .world.scene import SceneError

    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):
        from .presets import get_preset

        try:
            get_preset(args.preset)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (InputError, SceneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
