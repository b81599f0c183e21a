"""stepvar: training-free token pruning for next-scale (VAR) generators.

Shape legend used in tensor names throughout the package (after VAR's convention):
    B   batch rows as the model sees them (2x the prompts when CFG doubles the batch)
    L   tokens of a dense scale (h*w) or of a whole schedule
    l   tokens kept at a pruned scale (l <= L)
    C   transformer width          D   conditioning width (== C for released models)
    T   text tokens                Ct  text-encoder width
    H   attention heads            hd  head dim
    d   bits per token (codebook dim on the transformer side)
    h,w token grid of one scale    t   frames (1 for images)
e.g. x_BLC is a dense hidden state, x_BlC a pruned one, idx_Bl the kept positions.
"""

__version__ = "0.1.0"

# The public entry points, imported on first use so that `import stepvar` stays light.
_LAZY = {"load_pipeline": "stepvar.pipeline", "Pipeline": "stepvar.pipeline", "make_pruner": "stepvar.pruning.registry",
         "register_method": "stepvar.pruning.registry", "SamplingConfig": "stepvar.sampling"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stepvar' has no attribute {name!r}")
