"""Inside the diffusion model (part of tab 1): how its tokenizer reads the prompt, and the
forward noising process beside one denoising step, with the noise schedule plotted."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..errors import check_prompt
from ..gpu import on_gpu
from ..presets import Preset
from ..worlds.diffusion import ImageGenerator
from ..worlds.noising import noise_image, noise_levels, tokenize_prompt
from .charts import noise_schedule_figure
from .common import local_example_image, user_errors

EXAMPLE_IMAGES = sorted(str(p) for p in (Path(__file__).parents[2] / "examples" / "images").glob("*.png"))


class InsideDiffusion:
    """The "Inside the diffusion model" accordion's handlers and layout."""

    def __init__(self, preset: Preset):
        self.preset = preset

    def diffusion_tokens(self, prompt: str):
        """How the diffusion text encoder's tokenizer splits the prompt; tokens past its limit are marked cut."""
        with user_errors():
            prompt = check_prompt(prompt)  # before loading the model
            tokens, limit = tokenize_prompt(ImageGenerator.load(self.preset).pipe.tokenizer, prompt)
        shaded = [(token.replace("</w>", " "), "kept" if i < limit else "cut") for i, token in enumerate(tokens)]
        note = f"**{len(tokens)}** tokens; this text encoder reads at most **{limit}** (plus start and end markers)."
        if len(tokens) > limit:
            note += f" The last **{len(tokens) - limit}** are cut: the model never sees them."
        return shaded, note

    def preview_tokens(self, prompt: str):
        """diffusion_tokens as the prompt is typed: an empty or too long prompt shows nothing, with
        no error toast (the Run buttons say what is wrong)."""
        try:
            return self.diffusion_tokens(prompt)
        except gr.Error:
            return [], ""

    @on_gpu(duration=120)
    def explore_noise(self, image, timestep: int = 500, seed: int = 0):
        """Noise an image to timestep t (forward process) and let the model guess it back in one step."""
        with user_errors():
            pipe = ImageGenerator.load(self.preset).pipe
            result = noise_image(pipe, image, timestep, seed)
        signal, noise = noise_levels(pipe.scheduler)
        return result.noisy, result.denoised, noise_schedule_figure(signal, noise, int(timestep))

    def build(self, prompt: gr.Textbox) -> None:
        with gr.Accordion("Inside the diffusion model: tokens and noise", open=False):
            with gr.Row():
                tokens = gr.HighlightedText(label="The prompt as the diffusion text encoder reads it",
                                            color_map={"kept": "#9ae6b4", "cut": "#cbd5e0"}, show_legend=True)
                note = gr.Markdown(label="Token count against the limit")
            gr.Button("Tokenize", size="sm").click(self.diffusion_tokens, prompt, [tokens, note])
            prompt.change(self.preview_tokens, prompt, [tokens, note], api_visibility="private",
                          trigger_mode="always_last")
            gr.Markdown("**Noising vs denoising.** Training adds noise to an image up to step *t*; the model learns "
                        "to guess the clean image back. Move *t* and watch both.")
            with gr.Row():
                # A file path, not a decoded picture: noise_image reads its size from the header before decoding.
                source = local_example_image(EXAMPLE_IMAGES[0], label="Image to noise",
                                             type="filepath", image_mode=None, height=200, value=EXAMPLE_IMAGES[0],
                                             elem_classes="ww-pixels")
                noisy = gr.Image(label="Noised to t (forward)", type="pil", height=200, buttons=[],
                                 elem_classes="ww-pixels")
                denoised = gr.Image(label="The model's guess from it (reverse, one step)", type="pil", height=200,
                                    buttons=[], elem_classes="ww-pixels")
            with gr.Row():
                timestep = gr.Slider(0, 999, value=500, step=1, label="Timestep t")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Noise seed")
            schedule = gr.Plot(label="Noise schedule")
            gr.Examples(EXAMPLE_IMAGES, inputs=source)
            inputs, outputs = [source, timestep, seed], [noisy, denoised, schedule]
            gr.Button("Noise it", size="sm").click(self.explore_noise, inputs, outputs)
            timestep.release(self.explore_noise, inputs, outputs, api_visibility="private")
