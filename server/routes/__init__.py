"""HTTP routes: OpenAI-compatible (``openai``), native per-modality (``native``) and operations (``ops``)."""
