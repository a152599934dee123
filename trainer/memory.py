"""Memory of one DSO step: an estimate the trainer prints before it starts, and a measurement to check it.

The estimate (bytes), for a batch of N = rows × padded length tokens, a model of L layers, hidden size D,
MLP width I and vocabulary V in a dtype of b bytes, with S steered sites:

    weights      = parameters × b
    adapter      = 2·S·D × 16                 a and b, fp32: value, gradient, Adam's two moments
    activations  = N · (L · layer + 8·D)      kept for the backward pass of the steered forward;
        layer    = 16·D + 4·b·D + 3·b·I       per token and layer: each of the two norms keeps an fp32 copy
                                              of its input (4·D) and its site an fp32 copy of its output
                                              (4·D); attention keeps q, k, v (k and v repeated to every
                                              head) and its output (4·b·D); the gated MLP its gate, the
                                              gate's activation and its up projection (3·b·I). The frozen
                                              weights need no saved inputs. 8·D: the final norm and its site.
        with activation checkpointing:  N · (L · b·D + layer + 8·D)   each layer keeps only its input and
                                              one layer at a time is recomputed in the backward pass
    logits       = N · V · (b + 30)           the logits (b), then fp32: log-softmax of the steered and of the
                                              base pass (kept for the KL over every position), the KL's exp
                                              and difference (saved for its backward), two temporaries (the
                                              product; the log-softmax's backward)
    total        = weights + adapter + activations + logits

Measured/estimated on the CPU: 0.82-1.09 on tiny models (widths 128-256, 2-8 layers, fp32 and bf16, with
and without checkpointing), 1.04-1.13 on SmolLM2-135M with the coefficient 26 the logits had first (30 now).
Not counted: the CUDA context and allocator fragmentation (a few hundred MB to a few GB on a GPU), the
tokeniser and Python. The coefficients were counted from the saved tensors of Llama-style decoder layers
(transformers 5, SDPA attention) and checked against measured peaks: `tests/trainer/test_memory.py` on CPU
in bf16, `bench/train_throughput.py` (CPU and CUDA) and `bench/gpu_check.sh`.

`measure_peak(fn, device)` runs fn and returns the peak of memory allocated above what was allocated
before: torch.cuda.max_memory_allocated on a GPU; on the CPU the running sum of the allocations and frees
torch's profiler records (the CPU allocator keeps no peak of its own; RSS would count the whole process).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

GIB = 1024**3
LOGIT_FP32_BYTES = 30  # per token and vocabulary entry, besides the logits themselves: see the docstring


@dataclass(frozen=True)
class StepMemory:
    """One step's memory in bytes, by part (see the module docstring for each formula)."""

    weights: int
    adapter: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits

    @property
    def step(self) -> int:
        """Everything but the weights: what a step adds to a loaded model."""
        return self.total - self.weights

    def describe(self) -> str:
        parts = (("weights", self.weights), ("activations", self.activations), ("logits", self.logits),
                 ("adapter+Adam", self.adapter))
        return (" + ".join(f"{name} {value / GIB:.2f}" for name, value in parts)
                + f" = {self.total / GIB:.2f} GiB")

    def to_dict(self) -> dict:
        return {"weights": self.weights, "adapter": self.adapter, "activations": self.activations,
                "logits": self.logits, "total": self.total}


def text_config(config):
    """The language model's config (multimodal wrappers nest it)."""
    return getattr(config, "text_config", None) or config


def weight_bytes(config, dtype: torch.dtype) -> int:
    """The model's weights in `dtype`, counted on the meta device (nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    return count * torch.empty((), dtype=dtype).element_size()


def estimate(config, dtype: torch.dtype, rows: int, length: int, num_sites: int,
             gradient_checkpointing: bool = False, weights: int | None = None) -> StepMemory:
    """The estimate of one step's memory for a batch of `rows` prompts padded to `length` tokens.

    Args:
        config: the model's transformers config.
        dtype: the model's dtype (the adapter is fp32 whatever it is).
        num_sites: steered sites (rows of a and b).
        weights: the weights' bytes when known (a loaded model); else counted from the config.
    """
    c = text_config(config)
    d, inter, layers, vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    b = torch.empty((), dtype=dtype).element_size()
    tokens = rows * length
    layer = 16 * d + 4 * b * d + 3 * b * inter
    kept = layers * b * d + layer if gradient_checkpointing else layers * layer
    return StepMemory(
        weights=weight_bytes(config, dtype) if weights is None else weights,
        adapter=2 * num_sites * d * 16,
        activations=tokens * (kept + 8 * d),
        logits=tokens * vocab * (b + LOGIT_FP32_BYTES),
    )


def model_bytes(model: torch.nn.Module) -> int:
    """The bytes of a loaded model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def measure_peak(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak bytes allocated while fn runs, above what was allocated when it started (see the docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_peak(fn)


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))  # frees are negative
        stack.extend(node.children)
    running = peak = 0
    for _, size in sorted(events):
        running += size
        peak = max(peak, running)
    return peak
