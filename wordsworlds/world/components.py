"""The miniature Stable Diffusion's parts, built from standard diffusers/transformers classes.

Nothing here is custom: a CLIP tokenizer with a vocabulary learnt from the world's
captions, a CLIP text encoder, a KL autoencoder (8x downsampling, 8 latent channels) and a
conditional U-Net, all at toy width so that they train on a CPU. Saved together they form a
standard diffusers folder that `StableDiffusionPipeline.from_pretrained` loads as it loads
SD 1.5.

    >>> from wordsworlds.world.components import ModelConfig, build_tokenizer
    >>> tok = build_tokenizer(["a small red boat on the left"], max_length=ModelConfig().max_tokens)
    >>> tok.tokenize("a small red boat")
    ['a</w>', 'small</w>', 'red</w>', 'boat</w>']
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


@dataclass
class ModelConfig:
    """Sizes of every part; one place, so a toy smoke run and the shipped run share code."""

    image_size: int = 64
    # Latents at 1/4 of the side (16x16), not SD's 1/8: at 1/8 a thing covers one or two latent cells, and
    # the first full storybook run's U-Net drew blobs (0.04 of scenes exact; 0.756 of VAE round trips read
    # back). At 1/4, after the whole recipe, the recognizer read back 0.907 of round trips with 4 channels and
    # 0.947 with 8 (300 scenes; the 8-channel run 500 steps from the end of its whole-picture stage).
    latent_channels: int = 8
    # Three blocks: two 2x downsamples -> latents at 1/4. The widths of the 1/8 run's decoder, which has to
    # draw ears, sails and roofs.
    vae_channels: tuple = (32, 64, 96)
    vae_norm_groups: int = 8
    # Two levels (16x16, 8x8), 64/128 wide: 15.8 ms per guided step with two threads (0.32 s for 20
    # steps; the render-time target is 1.5x the shapes world's 0.33 s), against 21-22 ms for three
    # levels (64/128/128 or 48/96/128) and 27 ms at 80/160 (one run, nothing else running; random weights,
    # measured with 4 latent channels and 40 heads before the switch to 8 and 32).
    unet_channels: tuple = (64, 128)
    unet_norm_groups: int = 16
    unet_conv_in_kernel: int = 3  # SD's; a wider first kernel sees more of the zero padding, i.e. where it is
    unet_layers_per_block: int = 1
    # Diffusers reads attention_head_dim as the number of heads. 32 heads left 2 and 4 channels a head: the
    # 16x16 U-Net drew every kind as the same blob (kind read back at chance, 0.07 after 6,500 steps), and
    # each training step took 1.6 s (1 thread). Forked at step 7,100 with 4 heads (16 and 32 channels a
    # head; the weights load as they are, the heads only regroup them), a step took 0.74 s and the loss fell
    # from 0.11 to 0.07 within 1,400 steps; at 8,500, kind 0.15, exact 0.11 / 0.02; at 18,000 (the cosine's
    # end), kind 0.81, colour 0.82, exact 0.68 in distribution / 0.42 held out, 0.16 s a picture (2 threads).
    attention_head_dim: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_tokens: int = 40  # the miniature text encoder's limit (CLIP's is 77)


CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_tokenizer(corpus: list[str], max_length: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges are learnt from `corpus`, so each world word is one token.

    Every byte stays in the vocabulary (with and without the end-of-word mark), so text from
    outside the world still tokenizes, into pieces, never into unknowns.
    """
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) * 2 + 400,
        special_tokens=specials,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # The trainer numbers the word-final characters it meets ("a</w>", ",</w>") in the order of a hash map,
    # which changes from one process to the next; number them in sorted order, in the same slots, so that a
    # tokenizer rebuilt from the same corpus gives the same ids as the one the text encoder trained with.
    merged = {left + right for left, right in merges}
    loose = [t for t in vocab if t not in merged and t not in alphabet and t not in specials]
    for token, slot in zip(sorted(loose), sorted(vocab[t] for t in loose)):
        vocab[token] = slot
    for char in sorted(alphabet):
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_text_encoder(config: ModelConfig, vocab_size: int, eos_token_id: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=config.text_hidden,
            intermediate_size=config.text_hidden * 4,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_tokens,
            projection_dim=config.text_hidden,
            bos_token_id=0,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    )


def build_vae(config: ModelConfig) -> AutoencoderKL:
    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.image_size,
        mid_block_add_attention=False,  # at 16x16 convolutions see enough; attention costs more than it buys
    )


def build_unet(config: ModelConfig) -> UNet2DConditionModel:
    n = len(config.unet_channels)
    latent_size = config.image_size // 2 ** (len(config.vae_channels) - 1)
    # Cross-attention at every resolution: the words must reach each place on the canvas,
    # and "on the left" only means something where the network can see the whole picture.
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.unet_norm_groups,
        conv_in_kernel=config.unet_conv_in_kernel,
    )


def build_scheduler(zero_terminal_snr: bool = True) -> DDIMScheduler:
    """The training noise schedule (SD 1.5's scaled-linear betas), saved with the pipeline.

    SD 1.5's schedule leaves about 7% of the image in the last, "pure noise" step; on 8x8
    latents that is enough to read where the objects are, so a model trained on it learns to
    take the layout from the noise instead of from the words, and at inference (true noise)
    puts objects wherever the seed suggests. Rescaling to zero terminal SNR (Lin et al., 2023,
    "Common diffusion noise schedules and sample steps are flawed") removes that leak; it
    needs v-prediction (at SNR 0 the noise is the input itself) and trailing timesteps.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if zero_terminal_snr else "epsilon",
        rescale_betas_zero_snr=zero_terminal_snr,
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
    )


# --- The two-by-two's models: a paired caption writer (next-token / masked-diffusion) and a
# next-token painter over image tokens. Standard transformers classes again, at toy width.

WORD_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]", "bos_token": "[BOS]",
                 "sep_token": "[SEP]", "eos_token": "[EOS]"}


def build_word_tokenizer(corpus: list[str], extra_tokens: tuple[str, ...] = ()):
    """A word-level tokenizer (one token per word of `corpus`, lower-cased), saved as any HF tokenizer.

    The caption models write the world's words, so a word per token keeps every step of
    either process one word on screen. Words outside the vocabulary become [UNK].
    `extra_tokens` (e.g. image codes) are appended after the words.
    """
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token=WORD_SPECIALS["unk_token"]))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(WORD_SPECIALS.values()), show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    if extra_tokens:
        backend.add_tokens(list(extra_tokens))
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    return PreTrainedTokenizerFast(tokenizer_object=backend, **WORD_SPECIALS)


@dataclass
class CaptionerConfig:
    """One size for both caption models, so that only the process differs between them."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    max_positions: int = 96


def build_captioner(process: str, vocab_size: int, config: CaptionerConfig, pad_token_id: int):
    """A BERT of the given size: `next_token` with causal attention (BertLMHeadModel),
    `masked_diffusion` with full attention (BertForMaskedLM). Same layers, same parameter count."""
    from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel

    bert = BertConfig(
        vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=config.hidden * 4,
        max_position_embeddings=config.max_positions, type_vocab_size=1, pad_token_id=pad_token_id,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # an endless synthetic stream: no overfitting to fight
        is_decoder=process == "next_token",
    )
    return BertLMHeadModel(bert) if process == "next_token" else BertForMaskedLM(bert)
