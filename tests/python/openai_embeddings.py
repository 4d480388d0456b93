"""POST /v1/embeddings through the real `openai` client, as existing OpenAI, LangChain and LlamaIndex code calls it.

Usage: python openai_embeddings.py BASE_URL API_KEY MODEL
Run by tests/openai_client.rs against a server it started (with API keys on); exits non-zero on the first failed
check, and prints a JSON summary of what it saw on success.
"""

import base64
import json
import math
import struct
import sys
import urllib.request

import openai

base, key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)
texts = ["how do I sort a list", "read a file line by line", "sort a list"]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def embed(texts, side, model=model):
    """The same texts through Duet's own /v1/embed."""
    body = json.dumps({"texts": texts, "model": model, "side": side}).encode()
    request = urllib.request.Request(
        f"{base}/v1/embed",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)["embeddings"]


def f32(x):
    """`x` rounded to the f32 it stands for (JSON floats print the shortest text that round-trips an f32)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def close(a, b, tol=1e-6):
    """Equal lengths, and components within `tol` as f32 values (0: the same f32s)."""
    assert len(a) == len(b), (len(a), len(b))
    assert all(abs(f32(x) - f32(y)) <= tol for x, y in zip(a, b)), (a[:4], b[:4])


# Floats, an array of texts.
floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
assert floats.object == "list" and floats.model == model, floats
assert [d.index for d in floats.data] == [0, 1, 2]
width = len(floats.data[0].embedding)
assert all(len(d.embedding) == width for d in floats.data)
assert all(abs(norm(d.embedding) - 1) < 1e-5 for d in floats.data)
assert floats.usage.prompt_tokens > len(texts) and floats.usage.total_tokens == floats.usage.prompt_tokens

# Base64: what the client asks for when no format is given (it then decodes the little-endian f32 bytes
# itself); asked for explicitly, the client hands the base64 string back as it came.
default = client.embeddings.create(model=model, input=texts)
explicit = client.embeddings.create(model=model, input=texts, encoding_format="base64")
for a, b, c in zip(floats.data, default.data, explicit.data):
    close(a.embedding, b.embedding, 0)
    assert isinstance(c.embedding, str), type(c.embedding)
    close(a.embedding, [x[0] for x in struct.iter_unpack("<f", base64.b64decode(c.embedding))], 0)

# The document side by default, the query side on request: each equals /v1/embed's for that side.
for a, b in zip(floats.data, embed(texts, "document")):
    close(a.embedding, b)
queries = client.embeddings.create(model=model, input=texts, encoding_format="float", extra_body={"input_type": "query"})
for a, b in zip(queries.data, embed(texts, "query")):
    close(a.embedding, b)

# One string; `dimensions` cuts and re-normalises.
single = client.embeddings.create(model=model, input=texts[2], encoding_format="float")
assert len(single.data) == 1
close(single.data[0].embedding, floats.data[2].embedding)
cut = client.embeddings.create(model=model, input=texts, dimensions=width // 2, encoding_format="float")
for a, b in zip(cut.data, floats.data):
    assert len(a.embedding) == width // 2
    assert abs(norm(a.embedding) - 1) < 1e-5
    scale = norm(b.embedding[: width // 2])
    close([x * scale for x in a.embedding], b.embedding[: width // 2], 1e-5)

# Mistakes are the client's errors, with the server's message.
try:
    client.embeddings.create(model="no-such-model", input=texts)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as err:
    assert "no-such-model" in str(err), err
try:
    client.embeddings.create(model=model, input=texts, dimensions=width + 1)
    raise AssertionError("too many dimensions were accepted")
except openai.UnprocessableEntityError as err:
    assert "dimensions" in str(err), err
try:
    client.embeddings.create(model=model, input=[[1, 2, 3]])
    raise AssertionError("token ids were accepted")
except openai.UnprocessableEntityError as err:
    assert "token ids" in str(err), err
try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).embeddings.create(model=model, input="x")
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print(json.dumps({"width": width, "prompt_tokens": floats.usage.prompt_tokens, "openai": openai.__version__}))
