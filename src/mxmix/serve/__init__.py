"""A small OpenAI-compatible HTTP server over ``mxmix.load`` (``mxmix serve``)."""
