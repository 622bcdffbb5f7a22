"""The command line: every tab's function, plus training, evaluation and a deployment check.

    python -m wordsworlds text "Once upon a time" --max-new-tokens 20 --json
    python -m wordsworlds render "a large red cat on the left" --steps 20 --out red.png
    python -m wordsworlds render "a large red cat on the left" --branch-at 8 --branch-prompt "a yellow dog on the left"
    python -m wordsworlds two-by-two "a large red cat on the left" --out four/
    python -m wordsworlds caption "a large red cat on the left" --branch-at 2 --branch-word green
    python -m wordsworlds fill-blanks "a ___ red ___ on the left" [--prompt "..."]
    python -m wordsworlds repaint "a red cat on the left" "a yellow dog on the left" --region left
    python -m wordsworlds embed dog puppy banana car --space minilm --space clip_text
    python -m wordsworlds hybrid "a sunset over the sea" --rounds 3
    python -m wordsworlds doctor --preset sd15      # what each role runs on; exit 2 if a model is missing
    python -m wordsworlds evaluate [--hybrid]
    python -m wordsworlds train [--model diffusion|captions|painter] [--toy] [--out DIR]

The preset is read here once (--preset, else $WORDSWORLDS_PRESET and the other WORDSWORLDS_*
settings, presets.from_environment) and passed down. Bad input and a model that cannot be
loaded end in a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .errors import InputError, ModelUnavailable, check_prompt
from .explore.explorer import explore
from .explore.projection import PROJECTIONS
from .explore.spaces import SPACES
from .hybrid.evaluate import evaluate_hybrid, format_hybrid_report
from .hybrid.loop import run_hybrid, validate_hybrid_options
from .hybrid.planner import validate_idea
from .models import (
    load_caption_model, load_describer, load_diffusion, load_llm, load_painter_model, load_sentence_encoder,
)
from .presets import PRESETS, Preset, from_environment
from .words.next_token import TextGenerator, TextResult, validate_options
from .world import evaluate as world_evaluate
from .two_by_two import Before, branch_text, caption_words, fill_blanks, repaint, run_two_by_two
from .words.captions import CaptionFrame, Captioner
from .world.train import WEIGHTS_DIR, TrainConfig, train
from .world.train_captions import CAPTIONS_DIR, CaptionTrainConfig, train_captions
from .world.train_painter import PAINTER_DIR, PainterTrainConfig, train_painter
from .worlds.diffusion import (
    SCHEDULERS, ImageGenerator, RenderResult, StepFrame, pipeline_with_scheduler, validate_branch, validate_render_options,
)
from .worlds.painter import PaintFrame
from .worlds.repaint import RepaintFrame


def cmd_text(args, preset: Preset) -> int:
    prompt = check_prompt(args.prompt)  # before loading anything
    options = validate_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.top_n)
    result = TextResult(text="")
    for step in TextGenerator.load(preset).stream(prompt, options, stats=result.stats):
        result.steps.append(step)
        if not args.json:
            print(step.text, end="", flush=True)
    result.text = "".join(s.text for s in result.steps)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        stats = result.stats
        print(f"\n\n[{stats.new_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
              f"first token {stats.time_to_first_token_s:.2f} s, {stats.forward_passes} forward passes]")
    return 0


def cmd_render(args, preset: Preset) -> int:
    prompt = check_prompt(args.prompt)
    recipe = preset.recipe
    options = validate_render_options(
        recipe.steps if args.steps is None else args.steps,
        recipe.guidance_scale if args.guidance_scale is None else args.guidance_scale,
        args.negative_prompt, args.seed, args.scheduler or recipe.scheduler, args.height, args.width,
        previews=bool(args.frames))
    if args.branch_at is not None:  # rewind to that step and continue with another prompt or seed
        options = replace(options, branch=validate_branch(options, args.branch_at, args.branch_prompt or "",
                                                          args.branch_seed, prompt))
    if args.frames:
        Path(args.frames).mkdir(parents=True, exist_ok=True)
    for item in ImageGenerator.load(preset).stream(prompt, options):
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


def cmd_caption(args, preset: Preset) -> int:
    """The next-token caption writer on one prompt; with --branch-at, rewound to that word and continued
    from --branch-word."""
    prompt = check_prompt(args.prompt)
    preset = in_this_process(preset)
    original = caption_words(Captioner.load(preset, "next_token").write(prompt))
    if args.branch_at is None:
        print(" ".join(original))
        return 0
    *_, frame = branch_text(preset, prompt, original, args.branch_at, args.branch_word or "")
    print(" ".join(caption_words(frame)))
    print(f"(the original: {' '.join(original)})", file=sys.stderr)
    return 0


def in_this_process(preset: Preset) -> Preset:
    """The CLI runs one request: its engines run here, with no engine process to start (engines.py)."""
    return replace(preset, accel=replace(preset.accel, engine_process=False))


def render_options_from(args, preset: Preset):
    recipe = preset.recipe
    return validate_render_options(recipe.steps if args.steps is None else args.steps,
                                   recipe.guidance_scale if args.guidance_scale is None else args.guidance_scale,
                                   "", args.seed, args.scheduler or recipe.scheduler, previews=False)


def lane_summary(frame) -> dict:
    """A lane's last frame as JSON-ready facts."""
    if isinstance(frame, CaptionFrame):
        return {"caption": frame.caption, "forward_passes": frame.step, "seconds": round(frame.seconds, 4),
                "probabilities": [None if p is None else round(p, 4) for p in frame.probabilities]}
    if isinstance(frame, PaintFrame):
        return {"forward_passes": frame.step, "seconds": round(frame.seconds, 4)}
    if isinstance(frame, RenderResult):
        return {"forward_passes": frame.stats.unet_evaluations, "steps": frame.stats.steps,
                "seconds": round(frame.stats.total_s, 4)}
    if isinstance(frame, RepaintFrame):
        return {"steps": frame.step, "seconds": round(frame.seconds, 4)}
    return {}


def picture_of(frame):
    return getattr(frame, "picture", None) or getattr(frame, "image", None)


def print_lanes(last: dict, out: str | None, as_json: bool) -> None:
    report = {}
    for lane, frame in last.items():
        report[lane] = lane_summary(frame)
        picture = picture_of(frame)
        if picture is not None and out:
            Path(out).mkdir(parents=True, exist_ok=True)
            picture.save(Path(out) / f"{lane}.png")
            report[lane]["out"] = str(Path(out) / f"{lane}.png")
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    for lane, facts in report.items():
        print(f"{lane}: " + ", ".join(f"{k} {v}" for k, v in facts.items() if k != "probabilities"))


def cmd_two_by_two(args, preset: Preset) -> int:
    prompt = check_prompt(args.prompt)
    options = render_options_from(args, preset)
    last = {}
    for lane, frame in run_two_by_two(in_this_process(preset), prompt, options):
        last[lane] = frame
    print_lanes(last, args.out, args.json)
    return 0


def cmd_fill_blanks(args, preset: Preset) -> int:
    last = {}
    for lane, frame in fill_blanks(preset, args.blanks, args.prompt):
        last[lane] = frame
    print_lanes(last, None, args.json)
    return 0


def cmd_repaint(args, preset: Preset) -> int:
    options = render_options_from(args, preset)
    last, before = {}, {}
    for lane, frame in repaint(in_this_process(preset), args.prompt, args.new_prompt, args.region, options):
        if isinstance(frame, Before):
            before[f"{lane}_before"] = frame
        else:
            last[lane] = frame
    if args.out:
        for name, frame in before.items():
            Path(args.out).mkdir(parents=True, exist_ok=True)
            frame.picture.save(Path(args.out) / f"{name}.png")
    print_lanes(last, args.out, args.json)
    return 0


def cmd_hybrid(args, preset: Preset) -> int:
    idea = validate_idea(args.idea)
    recipe = preset.recipe
    options = validate_hybrid_options(args.rounds, not args.no_plan, not args.no_refine,
                                      recipe.steps if args.steps is None else args.steps,
                                      recipe.guidance_scale if args.guidance_scale is None else args.guidance_scale,
                                      args.seed)
    rounds = []
    for round_ in run_hybrid(preset, idea, options):
        rounds.append(round_.to_dict())
        if not args.json:
            verdict = round_.check
            print(f"round {round_.index}: {round_.action}\n  rendered: {round_.prompt}\n  read: {round_.description}"
                  f"\n  score {verdict.score:.2f} {'PASS' if verdict.passed else 'miss'} {verdict.findings}")
    if args.json:
        print(json.dumps({"idea": idea, "rounds": rounds}, indent=2))
    return 0


def cmd_embed(args, preset: Preset) -> int:
    spaces = list(SPACES) if "all" in (args.space or []) else (args.space or ["minilm"])
    projection = args.projection or ("anchors" if args.anchors else "pca")
    if args.neighbours < 1:
        raise InputError(f"--neighbours must be at least 1, got {args.neighbours}")
    anchors = args.anchors or ["", ""]
    result = explore(preset, list(args.words), template=args.template, spaces=spaces, projection=projection,
                     dimensions=args.dimensions, anchor_from=anchors[0], anchor_to=anchors[1], llm_layer=args.layer)
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(args.neighbours), indent=2, ensure_ascii=False))
        return 0
    width = max(map(len, result.words)) + 2
    for space in result.spaces:
        print(f"\n{space} ({SPACES[space].kind}: {SPACES[space].title}) · {result.seconds[space]:.2f} s, "
              f"{result.cached[space]} cached")
        print(" " * width + "".join(f"{a[:16]:>18}" for a in result.axes[space]))
        for word, xyz in zip(result.words, result.coords[space]):
            print(f"{word:<{width}}" + "".join(f"{v:>18.4f}" for v in xyz))
        if len(result.words) <= 12:
            print("cosine similarity\n" + " " * width + "".join(f"{w[:8]:>9}" for w in result.words))
            for word, row in zip(result.words, result.similarity[space]):
                print(f"{word:<{width}}" + "".join(f"{v:>9.3f}" for v in row))
        print("nearest neighbours")
        for word in result.words:
            near = [r for r in result.neighbours(word, args.neighbours) if r["space"] == space]
            print(f"  {word} → " + ", ".join(f"{r['neighbour']} ({r['cosine']:.3f})" for r in near))
    for row in result.agreements():
        rho = "n/a" if row["spearman"] is None else f"{row['spearman']:.3f}"
        flipped = "n/a" if row["flipped"] is None else f"{row['flipped']:.1%}"
        print(f"\nagreement {row['space_a']} vs {row['space_b']}: Spearman {rho}, pair orders flipped {flipped}")
    return 0


def cmd_doctor(args, preset: Preset) -> int:
    """Load every model of the preset and say what each runs on; exit 2 if one cannot be loaded."""
    recipe = preset.recipe
    print(f"preset {preset.name}: {preset.hardware}")
    print(f"recipe: {recipe.steps} steps, guidance {recipe.guidance_scale:g}, scheduler {recipe.scheduler}")
    print(f"options: {preset.accel}")
    missing = 0
    for role, loader in (("LLM", load_llm), ("diffusion", load_diffusion), ("meaning encoder", load_sentence_encoder),
                         ("describer", load_describer),
                         ("next-token captioner", lambda p: load_caption_model(p, "next_token")),
                         ("masked-diffusion captioner", lambda p: load_caption_model(p, "masked_diffusion")),
                         ("painter", load_painter_model)):
        try:
            print(loader(preset).report.line())
        except ModelUnavailable as error:
            missing += 1
            print(f"{role}: MISSING: {error}")
    if missing:
        print(f"error: {missing} model(s) of the preset {preset.name!r} cannot be loaded here", file=sys.stderr)
        return 2
    return 0


def cmd_evaluate(args, preset: Preset) -> int:
    recipe = preset.recipe
    guidance_scale = recipe.guidance_scale if args.guidance_scale is None else args.guidance_scale
    steps = recipe.steps if args.steps is None else args.steps
    if args.weights:
        preset = replace(preset, diffusion=str(Path(args.weights).resolve()))
    if not preset.storybook_world:
        raise InputError(f"the evaluation reads pictures back with the storybook-world recognizer; the preset "
                         f"{preset.name!r} has none (use --preset tiny)")
    if args.hybrid:
        report = evaluate_hybrid(preset, steps=steps, guidance_scale=guidance_scale)
        print(json.dumps(report, indent=2) if args.json else format_hybrid_report(report))
        return 0
    pipe = pipeline_with_scheduler(load_diffusion(preset).pipe)
    report = world_evaluate.evaluate(pipe, load_describer(preset).recognizer, num_prompts=args.prompts,
                                     steps=steps, guidance_scale=guidance_scale)
    print(json.dumps(report, indent=2) if args.json else world_evaluate.format_report(report))
    return 0


def cmd_train(args, preset: Preset) -> int:
    # Training builds new models from the world's own data; of the preset it reads nothing.
    if args.model == "captions":
        config = CaptionTrainConfig.toy() if args.toy else CaptionTrainConfig()
        config.seed = config.seed if args.seed is None else args.seed
        summary = train_captions(config, out=Path(args.out) if args.out else CAPTIONS_DIR,
                                 run_dir=Path(args.run_dir or "runs/captions"))
        print(json.dumps({k: v for k, v in summary.items() if k != "train_config"}, indent=2))
        return 0
    if args.model == "painter":
        config = PainterTrainConfig.toy() if args.toy else PainterTrainConfig()
        config.seed = config.seed if args.seed is None else args.seed
        summary = train_painter(config, out=Path(args.out) if args.out else PAINTER_DIR,
                                run_dir=Path(args.run_dir or "runs/painter"))
        print(json.dumps({k: v for k, v in summary.items() if k != "train_config"}, indent=2))
        return 0
    config = TrainConfig.toy() if args.toy else TrainConfig()
    if args.seed is not None:
        config.seed = args.seed
    out = Path(args.out) if args.out else WEIGHTS_DIR
    summary = train(config, out=out, run_dir=Path(args.run_dir or "runs/storybook"))
    print(json.dumps({k: summary[k] for k in ("stage_seconds", "this_invocation_s", "recognizer_exact_scene_accuracy")},
                     indent=2))
    print(world_evaluate.format_report(summary["evaluation"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wordsworlds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--preset", choices=list(PRESETS),
                        help="model preset (default: $WORDSWORLDS_PRESET, else tiny)")

    def command(name, func, help):
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=func)
        return p

    p = command("text", cmd_text, "generate text token by token with its probabilities")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-n", type=int, default=5, help="candidates reported per token")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print text, stats and per-token probabilities as JSON")

    p = command("render", cmd_render, "render an image step by step with the diffusion model")
    p.add_argument("prompt")
    p.add_argument("--steps", type=int, help="default: the preset's recipe")
    p.add_argument("--guidance-scale", type=float, help="default: the preset's recipe")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the preset's recipe")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--out", default="render.png")
    p.add_argument("--frames", help="folder for every step's noisy-latent and x0 previews")
    p.add_argument("--branch-at", type=int, help="keep this many steps of the render, then follow --branch-prompt "
                                                 "or --branch-seed from that latent")
    p.add_argument("--branch-prompt", help="the prompt the rest of the steps follow")
    p.add_argument("--branch-seed", type=int, help="the noise still to draw (stochastic samplers only)")
    p.add_argument("--json", action="store_true")

    p = command("caption", cmd_caption, "write the scene's caption left to right (the two-by-two's next-token words)")
    p.add_argument("prompt")
    p.add_argument("--branch-at", type=int, help="rewind to this word (0 = the first) and write --branch-word there")
    p.add_argument("--branch-word", help="the word to write instead; the model continues from it")

    p = command("embed", cmd_embed, "place words in meaning and appearance spaces and compare them")
    p.add_argument("words", nargs="+", help="words or quoted phrases (commas also separate)")
    p.add_argument("--space", action="append", choices=list(SPACES) + ["all"],
                   help="repeat for several (default: minilm; 'all' for every space)")
    p.add_argument("--projection", choices=PROJECTIONS, help="default: pca, or anchors with --anchors")
    p.add_argument("--dimensions", type=int, choices=(2, 3), default=2)
    p.add_argument("--template", default="", help="e.g. 'a photo of a {}'")
    p.add_argument("--anchors", nargs=2, metavar=("FROM", "TO"), help="custom x axis, e.g. --anchors small large")
    p.add_argument("--layer", type=int, help="LLM hidden-state layer (default: the middle one)")
    p.add_argument("--neighbours", type=int, default=3)
    p.add_argument("--json", action="store_true")

    p = command("hybrid", cmd_hybrid, "plan, render, describe, check, refine")
    p.add_argument("idea")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-plan", action="store_true")
    p.add_argument("--no-refine", action="store_true")
    p.add_argument("--steps", type=int, help="default: the preset's recipe")
    p.add_argument("--guidance-scale", type=float, help="default: the preset's recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    p = command("two-by-two", cmd_two_by_two, "one prompt, four lanes: words and worlds, next-token and denoising")
    p.add_argument("prompt")
    p.add_argument("--steps", type=int, help="the diffusion model's steps (default: the preset's recipe)")
    p.add_argument("--guidance-scale", type=float, help="default: the preset's recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the preset's recipe")
    p.add_argument("--out", help="folder for the two pictures")
    p.add_argument("--json", action="store_true")

    p = command("fill-blanks", cmd_fill_blanks, "fill the blanks (___) of a caption with both words processes")
    p.add_argument("blanks", help='e.g. "a ___ red ___ on the left"')
    p.add_argument("--prompt", default="", help="the request the caption should describe (default: none)")
    p.add_argument("--json", action="store_true")

    p = command("repaint", cmd_repaint, "repaint one region of a picture with both worlds processes")
    p.add_argument("prompt", help="the first picture")
    p.add_argument("new_prompt", help="what the picture should show after")
    p.add_argument("--region", default="left", help='a place (left, right, top, bottom, center) or "x,y,width,height"')
    p.add_argument("--steps", type=int, help="default: the preset's recipe")
    p.add_argument("--guidance-scale", type=float, help="default: the preset's recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the preset's recipe")
    p.add_argument("--out", help="folder for the pictures before and after")
    p.add_argument("--json", action="store_true")

    command("doctor", cmd_doctor, "load the preset and print what each role runs on (device, dtype, speed-ups)")

    p = command("evaluate", cmd_evaluate, "GenEval-style pass rates of the miniature model")
    p.add_argument("--weights", help="diffusers folder (default: the preset's diffusion model)")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, help="default: the preset's recipe")
    p.add_argument("--guidance-scale", type=float, help="default: the preset's recipe")
    p.add_argument("--hybrid", action="store_true", help="evaluate the hybrid loop over 100 requests instead")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="train the storybook world's models: the miniature Stable Diffusion and the "
                                     "recognizer, the two caption writers, or the next-token painter")
    p.set_defaults(func=cmd_train)
    p.add_argument("--model", choices=("diffusion", "captions", "painter"), default="diffusion")
    p.add_argument("--toy", action="store_true", help="a few steps at toy width (smoke test)")
    p.add_argument("--out", help="folder to write (default: the shipped one)")
    p.add_argument("--run-dir", help="checkpoints and loss log; rerun to resume (default: runs/<model>)")
    p.add_argument("--seed", type=int)
    return parser


def main(argv=None, environ=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        preset = from_environment(os.environ if environ is None else environ, getattr(args, "preset", None))
        return args.func(args, preset)
    except (InputError, ModelUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
