"""Tiny random models built from a config in-process (no download), for plumbing tests.

`tiny_config(arch)` gives a 2-layer, 128-wide config of a supported architecture; `tiny_model(arch)` a
seeded random transformers model; `save_tiny_model(dir, arch)` a complete Hugging Face folder (config,
fp32 weights, a byte-level BPE tokenizer trained here with a chat template) that vLLM and transformers
both load.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The doctor called the nurse because she was late. The mechanic helped the baker because he knew how.",
    "Who does the pronoun refer to? Answer with exactly one of: the doctor, the nurse.",
    "The quick brown fox jumps over the lazy dog. Hello world! 0123456789 , . ; : ? ' \" ( ) [ ]",
    "user assistant system The capital of France is Paris. A B C D answer question",
    "He said his name, she said her name: him, hers, himself, herself. His Her Him Hers She",
] * 4

_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
}


def tiny_config(arch: str = "LlamaForCausalLM", hidden: int = 128, layers: int = 2):
    extra = {"head_dim": 32} if arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM") else {}
    return AutoConfig.for_model(
        _MODEL_TYPES[arch], architectures=[arch], hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB_SIZE,
        max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, dtype="float32", **extra,
    )


def tiny_model(arch: str = "LlamaForCausalLM", seed: int = 0, **config_kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_kwargs), dtype=torch.float32)
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model(directory: str | Path, arch: str = "LlamaForCausalLM", seed: int = 0, **config_kwargs) -> Path:
    directory = Path(directory)
    tiny_model(arch, seed, **config_kwargs).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


ENGINE_PROMPTS = ["The doctor called the nurse because", "Hello world!", "The quick brown fox jumps over",
                  "The mechanic helped the baker", "The capital of France is"]


def greedy(llm, requests: list[tuple[str, dict | None, int]]) -> list[list[int]]:
    """Token ids of greedy completions of a vLLM `LLM` for (prompt, extra_args, max_tokens), one batch,
    prefix-cache salted per steering setting."""
    from vllm import SamplingParams

    prompts = [{"prompt": p, "cache_salt": repr(extra)} for p, extra, _ in requests]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, extra_args=extra)
              for _, extra, n in requests]
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
