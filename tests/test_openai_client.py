"""The official openai client against the server, end to end: skipped where openai is not
installed (it is no dependency; tests/test_openai_api.py replays the requests it sends)."""
# ruff: noqa: F811 (the fixtures imported from test_serve are the tests' arguments)

import pytest

from test_serve import adapter, server  # noqa: F401

openai = pytest.importorskip("openai")


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key="none",
                         max_retries=0)


def test_models_and_completions(client):
    assert [m.id for m in client.models.list()] == ["nanolevels", "nanolevels-rag-qa"]
    out = client.completions.create(model="nanolevels", prompt="Ada Jo", max_tokens=12,
                                    temperature=0)
    streamed = list(client.completions.create(model="nanolevels", prompt="Ada Jo", max_tokens=12,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text
    assert out.usage.completion_tokens == 12 or out.choices[0].finish_reason == "stop"


def test_lists_n_logprobs_echo(client):
    out = client.completions.create(model="nanolevels", prompt=["Ada Jo", "Mira"], max_tokens=4,
                                    temperature=0.8, seed=1, n=2, logprobs=2, echo=True)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[2].text.startswith("Mira")
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)


def test_chat_and_its_errors(client):
    question = [{"role": "user", "content": "What is the birth city of Ada Jo Crane?"}]
    out = client.chat.completions.create(model="nanolevels-rag-qa", messages=question)
    assert out.choices[0].message.role == "assistant" and out.sources  # our extra field
    chunks = list(client.chat.completions.create(model="nanolevels-rag-qa", messages=question,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        out.choices[0].message.content)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nanolevels-rag-qa", messages=question, n=2)
    assert e.value.param == "n"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="Ada")
