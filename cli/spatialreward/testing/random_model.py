"""Build a random-weight Qwen3-VL checkpoint offline, for tests and benchmarks.

The real SpatialReward-8B weights cannot be downloaded in CI, so tests build a
tiny model with the same architecture class, a small byte-level BPE tokenizer
carrying the Qwen special tokens, a Qwen3-VL-style chat template and the real
Qwen3-VL processor, then load it through the same code path as the real model.
``--arch`` builds a model with the real Qwen3-VL-8B shapes (for GPU
throughput benchmarks); only the tokenizer stays small.

    python -m spatialreward.testing.random_model OUT_DIR [--arch qwen3_vl_8b_architecture.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Qwen's special tokens, in the order that gives them consecutive ids after the
# byte-level base vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]

# A Qwen3-VL-style template: one turn per message, images as
# <|vision_start|><|image_pad|><|vision_end|> in content order, text as is.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_theta": 5000000,
    # mrope_section must sum to head_dim / 2
    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"},
}

TINY_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "in_channels": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "num_position_embeddings": 64,  # a perfect square
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "deepstack_visual_indexes": [1],  # each < depth
}


# vLLM's CPU attention refuses head_dim 16: the engine tests serve this one
# (head_dim 64; mrope_section sums to head_dim / 2).
ENGINE_TEXT = {
    **TINY_TEXT,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"},
}
ENGINE_VISION = {**TINY_VISION, "hidden_size": 64, "intermediate_size": 128}

PRESETS = {"tiny": (TINY_TEXT, TINY_VISION), "engine": (ENGINE_TEXT, ENGINE_VISION)}


def _corpus() -> list[str]:
    from spatialreward.prompts import render_pq, render_sc

    words = (
        '{"edit_region": [{"id": 0, "label": "the dog", "bbox_2d": [12, 340, 560, 998]}], '
        '"reasoning": "<|bbox_0|> The dog was removed. <|global|> Clean edit.", "score": [21, 18]}'
    )
    return [render_sc("Remove the dog"), render_pq(), words] * 4


def build_tokenizer(vocab_size: int = 640):
    """A byte-level BPE tokenizer with Qwen's special tokens, trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build(out_dir: str | Path, arch: dict | None = None, seed: int = 0, dtype: str = "float32",
          preset: str = "tiny") -> Path:
    """Write a random-weight Qwen3-VL model + processor to ``out_dir``; return it.

    ``arch`` is a Qwen3-VL config dict (e.g. the real 8B hyperparameters); its
    shapes are used, with the vocabulary and special-token ids replaced by the
    small tokenizer's. Without it a tiny model (~0.1M parameters) is built.
    """
    from spatialreward.torch_pair import check_torch_pair

    check_torch_pair()  # a torch/torchvision mismatch in one line, not transformers' traceback
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    text = dict(arch["text_config"]) if arch else dict(PRESETS[preset][0])
    vision = dict(arch["vision_config"]) if arch else dict(PRESETS[preset][1])
    for key in ("model_type", "_about"):
        text.pop(key, None)
        vision.pop(key, None)
    rope = text.pop("rope_scaling", None) or {}
    theta = text.pop("rope_theta", 5000000)
    text["rope_parameters"] = {**rope, "rope_theta": theta}
    # The vocabulary is the small tokenizer's, padded to a multiple of 64.
    text["vocab_size"] = (len(tokenizer) + 63) // 64 * 64
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if not arch:
        vision["out_hidden_size"] = text["hidden_size"]

    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(getattr(torch, dtype))
    if arch is None:
        # Spread the random logits so greedy decoding does not collapse onto one token.
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 1.0)
    # Qwen3-VL-Instruct ships sampling defaults; the judge must override them
    # with the published greedy decoding (tests check it does).
    gc = model.generation_config
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = True, 0.7, 0.8, 20
    gc.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    gc.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)

    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=vision["patch_size"],
            temporal_patch_size=vision["temporal_patch_size"],
            merge_size=vision["spatial_merge_size"],
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            # Qwen3-VL's own defaults, not the published budget: only the
            # judge's explicit budget may give the published pixel grid.
            size={"shortest_edge": 65536, "longest_edge": 16777216},
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", help="a Qwen3-VL config JSON (real shapes); default: tiny")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="without --arch: tiny (head_dim 16) or engine (head_dim 64, servable by vLLM on a CPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arch = json.loads(Path(args.arch).read_text()) if args.arch else None
    from spatialreward.errors import SpatialRewardError

    try:
        out = build(args.out_dir, arch=arch, seed=args.seed, dtype=args.dtype, preset=args.preset)
    except SpatialRewardError as exc:  # e.g. a torch/torchvision mismatch: one line, the CLI's exit code
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    print(out)


if __name__ == "__main__":
    main()
