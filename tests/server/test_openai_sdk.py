"""The real openai SDK against a live uvicorn server on 127.0.0.1 (base64 by default, auth, errors)."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from testkit import live_server, make_settings, png_bytes

from d2v.server.app import create_app


def test_openai_sdk_round_trip(store):
    app = create_app(make_settings(store, api_keys=["sk-test"]))
    with live_server(app) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
        texts = ["hello world", "embedding servers batch requests"]
        default = client.embeddings.create(model="tiny-text", input=texts)  # the SDK asks for base64
        floats = client.embeddings.create(model="tiny-text", input=texts, encoding_format="float")
        assert [d.index for d in default.data] == [0, 1]
        for a, b in zip(default.data, floats.data, strict=True):
            np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-6)
        assert default.usage.prompt_tokens == default.usage.total_tokens > 0
        short = client.embeddings.create(model="tiny-text", input="hello", dimensions=4)
        assert len(short.data[0].embedding) == 4
        image = client.embeddings.create(
            model="tiny-image",
            input=["data:image/png;base64," + base64.b64encode(png_bytes()).decode()],
            extra_body={"modality": "image"},
        )
        assert len(image.data[0].embedding) == 16
        assert [m.id for m in client.models.list().data] == ["tiny-audio", "tiny-image", "tiny-text"]
        with pytest.raises(openai.NotFoundError) as missing:
            client.embeddings.create(model="nope", input="x")
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).embeddings.create(
                model="tiny-text", input="x"
            )
