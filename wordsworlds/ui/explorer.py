"""Tab 2, "Embedding explorer": the same words in meaning space and appearance space, side by side.

Handlers are methods named for the API: /embed_words and /tokenize_words.
The work lives in wordsworlds/explore/.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..errors import InputError
from ..explore.explorer import DEFAULT_SPACES, explore, parse_words, validate_template, word_sets
from ..explore.figures import heatmap_figure, scatter_figure
from ..explore.spaces import SPACES, rendered_images, tokenize
from ..gpu import on_gpu
from ..presets import Preset
from .common import format_seconds, scroll_into_view, user_errors

DEFAULT_WORDS = "dog, puppy, cat, kitten, banana, apple, car, truck, sunset, snowman, small, large"
PROJECTION_CHOICES = [("PCA", "pca"), ("t-SNE", "tsne"), ("UMAP", "umap"), ("Custom axes (anchors)", "anchors")]


def describe(result) -> str:
    timings = " · ".join(
        f"**{space}** {format_seconds(result.seconds[space])} ({result.cached[space]} cached)" for space in result.spaces
    )
    lines = [f"{len(result.words)} words · {timings}"]
    lines += [f"- {notice}" for notice in result.notices]
    return "\n".join(lines)


def list_words(words: str, highlight: str):
    """Offer the current words in the highlight menu (after an Embed)."""
    try:
        items, _ = parse_words(words)
    except InputError:
        return gr.skip()
    return gr.Dropdown(choices=items, value=highlight if highlight in items else items[0])


def choose_set(name: str):
    """Fill the words and template from a curated set."""
    chosen = word_sets().get(name)
    if not chosen:
        return gr.skip(), gr.skip(), ""
    return ", ".join(chosen["words"]), chosen.get("template", ""), chosen.get("about", "")


def use_custom_axes() -> str:
    return "anchors"


class ExplorerTab:
    """Tab 2's handlers (each method an API endpoint of the same name) and its layout."""

    def __init__(self, preset: Preset):
        self.preset = preset

    @on_gpu(duration=120)
    def embed_words(self, words: str, template: str = "", spaces: list[str] | None = None, projection: str = "pca",
                    dimensions: int = 2, anchor_from: str = "", anchor_to: str = "", highlight: str = "",
                    llm_layer: str = ""):
        """Place words in each space: (scatter, similarity heatmap, neighbours of the highlighted word,
        agreement between spaces, pairs that move most, rendered images, notes)."""
        with user_errors():
            result = explore(self.preset, words, template, list(DEFAULT_SPACES) if spaces is None else spaces,
                             projection, dimensions, anchor_from, anchor_to, highlight, llm_layer)
        neighbours = pd.DataFrame(result.neighbours(result.highlight, k=5),
                                  columns=["space", "rank", "neighbour", "cosine", "distance"])
        agreement = pd.DataFrame(
            [{"space A": r["space_a"], "space B": r["space_b"],
              "Spearman ρ": None if r["spearman"] is None else round(r["spearman"], 3),
              "pair orders flipped": None if r["flipped"] is None else f"{r['flipped']:.1%}", "pairs": r["pairs"]}
             for r in result.agreements()],
            columns=["space A", "space B", "Spearman ρ", "pair orders flipped", "pairs"],
        )
        shifts = pd.DataFrame(
            [{"space A": r["space_a"], "space B": r["space_b"], "pair": r["pair"], "cos A": round(r["cos_a"], 3),
              "rank A": f"{r['rank_a']}/{r['of']}", "cos B": round(r["cos_b"], 3), "rank B": f"{r['rank_b']}/{r['of']}"}
             for r in result.rank_shifts(k=3)],
            columns=["space A", "space B", "pair", "cos A", "rank A", "cos B", "rank B"],
        )
        gallery = []
        if "image_latents" in result.spaces:
            images = rendered_images(result.words, result.template, result.sources)
            gallery = [(image, word) for image, word in zip(images, result.words) if image is not None]
        return scatter_figure(result), heatmap_figure(result), neighbours, agreement, shifts, gallery, describe(result)

    def tokenize_words(self, words: str, template: str = ""):
        """How each model's tokenizer splits each word: pieces, ids, and the count against its limit."""
        with user_errors():
            items, _ = parse_words(words)
            template = validate_template(template)
            rows = tokenize(items, template, self.preset)
        table = pd.DataFrame(
            [{"text": r["text"], "tokenizer": r["tokenizer"], "pieces": " · ".join(r["pieces"]),
              "ids": " ".join(map(str, r["ids"])), "tokens / limit": f"{r['tokens']} / {r['limit']}"
              + (" (truncated)" if r["truncated"] else "")} for r in rows],
            columns=["text", "tokenizer", "pieces", "ids", "tokens / limit"],
        )
        return table

    def build(self) -> None:
        """Lay out the tab inside an open gr.Blocks and wire its events: the words and Embed, the map right
        under them with the controls that redraw it, then the tables and the settings."""
        gr.Markdown(
            "The same words, placed by what they **mean** (a sentence encoder, the LLM's own states) and by how they "
            "**look** to the diffusion model (its text encoder, the latents of the image it draws). Close in one "
            "space, far in another: that is where the two kinds of model see the world differently.",
            elem_classes="ww-intro",
        )
        with gr.Row(equal_height=False):
            words = gr.Textbox(label="Words or phrases (comma or newline separated)", value=DEFAULT_WORDS, lines=3,
                               max_lines=12, scale=3, min_width=240)
            with gr.Column(scale=1, min_width=220):
                word_set = gr.Dropdown(choices=list(word_sets()), value=None, label="Curated set")
                template = gr.Textbox(label="Template (optional)", placeholder="a photo of a {}")
                run = gr.Button("Embed", variant="primary")
        about = gr.Markdown()
        with gr.Column(elem_id="ww-explorer-results"):
            notes = gr.Markdown(label="Notes")
            gr.Markdown("**Where the words land** (colour: order along the first panel's x axis)")
            scatter = gr.Plot(label="Where the words land", show_label=False)
        with gr.Row():
            projection = gr.Radio(PROJECTION_CHOICES, value="pca", label="Projection")
            dimensions = gr.Radio([2, 3], value=2, label="Dimensions")
            highlight = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Highlight a word")
        with gr.Row():
            neighbours = gr.Dataframe(label="Nearest neighbours of the highlighted word", interactive=False)
            agreement = gr.Dataframe(label="Where the spaces disagree: rank agreement of all pair similarities",
                                     interactive=False)
        shifts = gr.Dataframe(label="Pairs whose closeness rank moves most between spaces", interactive=False)
        gr.Markdown("**Cosine similarity**")
        heatmap = gr.Plot(label="Cosine similarity", show_label=False)
        gallery = gr.Gallery(label="What the diffusion model draws for each word (image_latents)", columns=6,
                             height="auto", object_fit="contain", elem_classes="ww-pixels")
        spaces = gr.CheckboxGroup(choices=[(f"{s.kind}: {s.title}", s.name) for s in SPACES.values()],
                                  value=list(DEFAULT_SPACES), label="Spaces")
        with gr.Accordion("What each space is", open=False):
            gr.Markdown("\n".join(f"- **{s.title}** (`{s.name}`, {s.kind}): {s.about}" for s in SPACES.values())
                        + "\n\nEvery view uses cosine similarity: vectors are scaled to length 1 first.")
        with gr.Accordion("Custom axes and LLM layer", open=False):
            with gr.Row():
                anchor_from = gr.Textbox(label="Axis from", placeholder="small")
                anchor_to = gr.Textbox(label="Axis to", placeholder="large")
                # Text, not a number box: an empty number box turns into 0 (the first layer) when shown.
                llm_layer = gr.Textbox(value="", label="LLM layer (empty: the middle one)", placeholder="middle")
        with gr.Accordion("Tokenizers: how each model splits the words", open=False):
            tokens = gr.Dataframe(label="Tokenizers", interactive=False, wrap=True)

        inputs = [words, template, spaces, projection, dimensions, anchor_from, anchor_to, highlight, llm_layer]
        outputs = [scatter, heatmap, neighbours, agreement, shifts, gallery, notes]
        # One chain per click: a bad input is reported once, by embed_words, not again by each follower.
        embedded = run.click(self.embed_words, inputs=inputs, outputs=outputs, concurrency_limit=2)
        run.click(None, js=scroll_into_view("ww-explorer-results"))
        embedded.success(list_words, inputs=[words, highlight], outputs=[highlight], api_visibility="private")
        embedded.success(self.tokenize_words, inputs=[words, template], outputs=[tokens], concurrency_limit=2)
        for control in (projection, dimensions, highlight):  # redraw from the cache on a change of view
            control.input(self.embed_words, inputs=inputs, outputs=outputs, api_visibility="private", concurrency_limit=2)
        word_set.input(choose_set, inputs=[word_set], outputs=[words, template, about], api_visibility="private")
        for anchor in (anchor_from, anchor_to):
            anchor.input(use_custom_axes, outputs=[projection], api_visibility="private")
