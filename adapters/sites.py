"""Where steering attaches: the per-architecture site table.

A *site* is the output of one normalisation module. Sites have canonical names shared by the trainer,
the adapter file and the server, whatever the architecture calls the module:

    layers.{i}.input_norm           the norm whose output feeds self-attention
    layers.{i}.post_attention_norm  the norm whose output feeds the MLP
    final_norm                      the norm before the LM head

Gemma3 has four norms per layer (sandwich norms); the one feeding its MLP is `pre_feedforward_layernorm`,
so that is its `post_attention_norm` site: the role matters, not the Hugging Face name.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteMap:
    """Hugging Face module paths of the three kinds of site, `{i}` standing for the layer index."""

    input_norm: str
    post_attention_norm: str
    final_norm: str


_LLAMA_LIKE = SiteMap(
    input_norm="model.layers.{i}.input_layernorm",
    post_attention_norm="model.layers.{i}.post_attention_layernorm",
    final_norm="model.norm",
)

SITE_MAPS: dict[str, SiteMap] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "Gemma3ForCausalLM": SiteMap(
        input_norm="model.layers.{i}.input_layernorm",
        post_attention_norm="model.layers.{i}.pre_feedforward_layernorm",
        final_norm="model.norm",
    ),
}

LAYER_SITE_KINDS = ("input_norm", "post_attention_norm")


class UnsupportedArchitectureError(ValueError):
    pass


def site_map(architecture: str) -> SiteMap:
    try:
        return SITE_MAPS[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} has no steering site map; supported: {', '.join(SITE_MAPS)}. "
            "Add its norm module paths to adapters/sites.py:SITE_MAPS."
        ) from None


def all_sites(num_layers: int, include_final: bool = True) -> tuple[str, ...]:
    """Every steerable site of a model with `num_layers` decoder layers, in forward order."""
    sites = [f"layers.{i}.{kind}" for i in range(num_layers) for kind in LAYER_SITE_KINDS]
    if include_final:
        sites.append("final_norm")
    return tuple(sites)


def parse_site(site: str) -> tuple[int | None, str]:
    """'layers.3.input_norm' -> (3, 'input_norm'); 'final_norm' -> (None, 'final_norm')."""
    if site == "final_norm":
        return None, "final_norm"
    parts = site.split(".")
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in LAYER_SITE_KINDS:
        return int(parts[1]), parts[2]
    raise ValueError(f"not a steering site name: {site!r} (expected 'layers.<i>.input_norm', "
                     "'layers.<i>.post_attention_norm' or 'final_norm')")


def module_path(architecture: str, site: str) -> str:
    """The Hugging Face module path of a canonical site on a given architecture."""
    layer, kind = parse_site(site)
    template = getattr(site_map(architecture), kind)
    return template if layer is None else template.format(i=layer)
