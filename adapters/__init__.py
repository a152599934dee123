"""Steering adapters: the file format and applying it.

    spec.py         SteeringSpec, AdapterMeta, ModelIdentity, AdapterFormatError: the adapter in memory
    methods.py      the methods an adapter may name (the trained ones and the untrained test/bench ones)
    io.py           save / load: the one safetensors file (validated; never unpickles)
    sites.py        per-architecture site maps (which norm outputs are steered, canonical names)
    hf.py           Steering + attach(): steer a transformers model with hooks (trainer, evaluation)
    inspect.py      describe / render an adapter file (`fairsteer adapter inspect`, cli/adapter.py)
    model_store.py  pull(), resolve_model(), ModelPullError: the real small model, offline (cli/model.py)

Nothing here imports vLLM, the server or the command line, and this package's import is light (torch is
imported by the modules that need it), so `fairsteer --help` stays fast. Errors a user can fix are
`AdapterFormatError` and `ModelPullError`; the command line prints them.
"""
