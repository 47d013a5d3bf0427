"""The top floor: workflows that combine the other parts (``quickstart``: pretrain + export the default
models; ``quality``: the quality report; ``serve``: provision models for ``d2v serve``). Anything may be
imported here; nothing below imports this package."""
