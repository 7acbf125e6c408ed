"""drwkv: Diffusion-RWKV image generators. Applications use ``drwkv.Pipeline`` (``drwkv.pipeline``)."""


def __getattr__(name):
    # Imported on first use, so that `import drwkv` stays light for training code.
    if name == "Pipeline":
        from drwkv.pipeline import Pipeline
        return Pipeline
    raise AttributeError(f"module 'drwkv' has no attribute {name!r}")
