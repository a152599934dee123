"""Steering adapters: the file format and applying it.

    spec.py         SteeringSpec, AdapterMeta, ModelIdentity, AdapterFormatError: the adapter in memory
    io.py           save / load: the one safetensors file (validated; never unpickles)
    sites.py        per-architecture site maps (which norm outputs are steered, canonical names)
    hf.py           Steering + attach(): steer a transformers model with hooks (trainer, evaluation)
    inspect.py      `fairsteer adapter inspect`
    model_store.py  `fairsteer model pull`, resolve_model(): the real small model, offline

Nothing here imports vLLM, and this package's import is light (torch is imported by the modules that
need it), so `fairsteer --help` stays fast.
"""
