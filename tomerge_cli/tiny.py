"""Tiny diffusers pipelines built from configs (random weights, no download).

For tests, the demo and offline smoke runs: the same classes and code paths as Stable
Diffusion, SDXL, PixArt-alpha and AnimateDiff, at a few hundred thousand parameters.
The SD pipeline gets a real CLIP tokenizer, built from the BPE vocabulary open_clip ships.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import torch

EMBED = 32  # text embedding width of the tiny pipelines


def _unet_kwargs() -> dict[str, Any]:
    return dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def clip_tokenizer(directory: Path) -> Any:
    """A transformers CLIPTokenizer with the real CLIP vocabulary, from open_clip's BPE file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe, "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n"
    )
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )


def _text_encoder(tokenizer_dir: Path | None, family: str) -> tuple[Any, Any]:
    """(tokenizer, text encoder), or (None, None) without `tokenizer_dir` (the pipeline then
    takes prompt_embeds). The tokenizer is CLIP's (`clip_tokenizer`); the encoder a
    two-layer CLIP text model (family "clip", SD) or a one-layer T5 encoder ("t5", PixArt;
    "umt5", Wan; the CLIP tokenizer standing in for T5's)."""
    if tokenizer_dir is None:
        return None, None
    tokenizer = clip_tokenizer(tokenizer_dir)
    if family == "clip":
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=EMBED,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return tokenizer, CLIPTextModel(config)
    from transformers import T5Config, T5EncoderModel, UMT5EncoderModel

    config = T5Config(
        vocab_size=tokenizer.vocab_size, d_model=EMBED, d_kv=8, d_ff=64, num_layers=1, num_heads=2
    )
    return tokenizer, (UMT5EncoderModel if family == "umt5" else T5EncoderModel)(config)


def tiny_sd(tokenizer_dir: Path | None = None, seed: int = 0) -> Any:
    """StableDiffusionPipeline; with `tokenizer_dir` it has a tokenizer and text encoder
    (so it takes text prompts), otherwise pass prompt_embeds."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer, text_encoder = _text_encoder(tokenizer_dir, "clip")
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**_unet_kwargs()),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl(seed: int = 0) -> Any:
    """StableDiffusionXLPipeline-shaped: no attention at full resolution (first block
    plain), like SDXL; pass prompt_embeds and pooled_prompt_embeds (width 2 * EMBED)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * EMBED,
        attention_head_dim=8,
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 2 * EMBED,
        transformer_layers_per_block=(1, 1, 2),
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=_scheduler(),
    )


# The image-attention heads of the tiny PixArt and Sana transformers (width 16).
_DIT_HEADS = {"num_attention_heads": 2, "attention_head_dim": 8}


def tiny_pixart(seed: int = 0, layers: int = 8, tokenizer_dir: Path | None = None) -> Any:
    """PixArtAlphaPipeline (DiT, ada_norm_single, learned sigma, no UNet). With
    `tokenizer_dir` it has a text encoder (a one-layer T5 encoder, with the CLIP tokenizer
    standing in for T5's) and takes text prompts; otherwise pass prompt_embeds,
    prompt_attention_mask and their negatives."""
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tokenizer, text_encoder = _text_encoder(tokenizer_dir, "t5")
    transformer = PixArtTransformer2DModel(
        sample_size=16,
        num_layers=layers,
        patch_size=2,
        **_DIT_HEADS,
        caption_channels=EMBED,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_vae(),
        transformer=transformer,
        scheduler=_scheduler(),
    )


def tiny_animatediff(seed: int = 0) -> Any:
    """AnimateDiffPipeline: the tiny SD UNet plus a motion adapter (temporal attention)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=16,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
        use_motion_mid_block=False,
    )
    return AnimateDiffPipeline(
        vae=_vae(),
        text_encoder=None,
        tokenizer=None,
        unet=UNet2DConditionModel(**_unet_kwargs()),
        motion_adapter=adapter,
        scheduler=_scheduler(),
    )


def tiny_wan_transformer(seed: int = 0, layers: int = 2) -> Any:
    """WanTransformer3DModel (Wan 2.x text-to-video): 3D rotary, patch (1, 2, 2), width 24."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,  # the Wan VAE's latent channels (its latents_mean has 16)
        out_channels=16,
        text_dim=EMBED,
        freq_dim=16,
        ffn_dim=32,
        num_layers=layers,
        cross_attn_norm=True,
        rope_max_seq_len=32,
    )


def tiny_wan(seed: int = 0, layers: int = 2, tokenizer_dir: Path | None = None) -> Any:
    """WanPipeline (text-to-video): the tiny Wan transformer and a tiny Wan VAE (8x spatial,
    4x temporal). With `tokenizer_dir` it has a one-layer UMT5 text encoder and takes text
    prompts; otherwise pass prompt_embeds and negative_prompt_embeds (width EMBED). 64x64
    pixels and 5 frames give 2 latent frames of 4x4 tokens."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer = tiny_wan_transformer(seed, layers)
    tokenizer, text_encoder = _text_encoder(tokenizer_dir, "umt5")
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )


def tiny_sana_transformer(seed: int = 0, layers: int = 2) -> Any:
    """SanaTransformer2DModel (linear attention, conv MLP), width 16, patch 1."""
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    return SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        **_DIT_HEADS,
        num_layers=layers,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=8,
        patch_size=1,
    )


def prompt_embeds(n: int = 1, width: int = EMBED, tokens: int = 8, seed: int = 0) -> Any:
    """(cond, uncond) text embeddings for pipelines built without a text encoder."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, tokens, width, generator=g), torch.randn(n, tokens, width, generator=g)
