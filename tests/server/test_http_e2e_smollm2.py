"""End to end on the real SmolLM2-135M-Instruct: `fairsteer serve --model smollm2-135m-instruct` with a
constructed adapter, driven by the official `openai` client (chat, streaming, extra_body).

Slow (about a minute of start-up on one core).
"""

import openai
import pytest
from server_process import ServerProcess, fairsteer_argv, free_port
from transformers import AutoConfig

from adapters import io
from adapters.spec import ModelIdentity, random_spec

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "The nurse called the doctor because she was late. Who was late?"}]


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory, smollm2_path):
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(smollm2_path))
    spec = random_spec(identity, "constructed", seed=0, scale_a=0.2, scale_b=0.5, base_model=MODEL,
                       method="constructed")
    adapter = io.save(spec, tmp_path_factory.mktemp("e2e") / "fair.safetensors")
    port = free_port()
    argv = fairsteer_argv(MODEL, {"fair": str(adapter)}, port)
    with ServerProcess(argv, port, tmp_path_factory.mktemp("e2e-logs") / "serve.log") as server:
        yield server, io.load(adapter).version


@pytest.mark.slow
@pytest.mark.vllm
def test_real_model_serves_steered_chat_through_the_openai_client(smollm2_server):
    server, version = smollm2_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]

    def ask(strength):
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                           extra_body={"fairness_strength": strength})
        assert r.model_extra["fairsteer"] == {"adapter": "fair", "version": version, "strength": strength}
        return r.choices[0].message.content

    base, steered = ask(0.0), ask(1.0)
    assert base.strip(), "the real model must answer"
    assert steered != base, "strength 1 must change the real model's answer"
    assert ask(0.0) == base, "greedy strength 0 is reproducible after steered requests"

    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                            stream=True, extra_body={"fairness_strength": 1.0})
    chunks = list(stream)
    assert chunks[0].model_extra["fairsteer"]["strength"] == 1.0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == steered

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2,
                                       extra_body={"fairness_strength": 5.0})
    assert "maximum" in str(info.value)
