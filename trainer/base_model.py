"""The frozen base model that training steers and evaluation measures: a Hugging Face causal LM on CPU.

Known aliases ("smollm2-135m-instruct") are resolved to their local folder by `adapters.model_store`,
pulled on first use; any other name is a local Hugging Face folder.
"""

import torch

from trainer.errors import ConfigError


def load_model(name_or_path: str):
    """(model, tokenizer, pad_id): fp32 (bf16 is 3-10x slower on these CPUs), eval mode, frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.model_store import resolve_model

    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {name_or_path!r}: cannot load a Hugging Face causal LM from {path} "
                          f"({exc}). Pass a local model folder or `fairsteer model pull smollm2-135m-instruct`"
                          ) from None
    model.requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model, tokenizer, pad_id
