"""The frozen base model that training steers and evaluation measures: a Hugging Face causal LM, placed.

Known aliases ("smollm2-135m-instruct") are resolved to their local folder by `adapters.model_store`,
pulled on first use; any other name is a local Hugging Face folder. Placement (device, dtype, several GPUs)
is `trainer.placement`'s.
"""

import sys

import torch

from trainer.config import DSOConfig
from trainer.errors import ConfigError

NOMINAL_LENGTH = 128  # tokens of a prompt, for placing a model before its prompts are known (chat templates)


def load_model(name_or_path: str, device: str = "cpu", dtype: str = "float32",
               training: DSOConfig | None = None):
    """(model, tokenizer, pad_id): eval mode, frozen, on `device` in `dtype` (`trainer.placement.resolve`).

    Args:
        device, dtype: the `--device` / `--dtype` settings. The CPU default is float32: bf16 is 3-10x
            slower on CPUs without AMX.
        training: the settings of the training run the model is for (None: evaluation). With `--device
            cuda` and several GPUs, the memory of its steps decides whether the model is split over them.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from adapters.model_store import resolve_model
    from trainer import placement

    target, torch_dtype = placement.resolve(device, dtype)
    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        device_map = _device_map(AutoConfig.from_pretrained(path), target, torch_dtype, training)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **device_map).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {name_or_path!r}: cannot load a Hugging Face causal LM from {path} "
                          f"({exc}). Pass a local model folder or `fairsteer model pull smollm2-135m-instruct`"
                          ) from None
    model.requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    where = placement.of(model)
    if where.device.type != "cpu":
        print(f"model on {', '.join(where.devices)} in {placement.dtype_name(where.dtype)}", file=sys.stderr)
    return model, tokenizer, pad_id


def _device_map(config, target: str, dtype: torch.dtype, training: DSOConfig | None) -> dict:
    """from_pretrained's placement arguments: one device, or `device_map` over the visible GPUs."""
    from trainer import memory, placement

    if target == "cpu":
        return {}
    if target != "cuda":
        return {"device_map": target}
    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    step = 0
    if training is not None:  # the exact batch is not known before the tokenizer and data: a nominal one
        rows = (2 * training.occupations_per_step + 2 * training.resolvable_per_step + training.generic_per_step
                + training.description_per_step)
        sites = 2 * memory.text_config(config).num_hidden_layers + 1
        step = memory.estimate(config, dtype, rows, NOMINAL_LENGTH, sites, training.gradient_checkpointing,
                               weights=0).step
    budget = placement.max_memory(memory.weight_bytes(config, dtype), step, gpus)
    if budget is None:
        return {"device_map": "cuda:0"}
    print(f"splitting the model over {len(budget)} GPUs (per-GPU budget for weights, GiB: "
          f"{[round(b / 1024**3, 1) for b in budget.values()]})", file=sys.stderr)
    return {"device_map": "auto", "max_memory": budget}
