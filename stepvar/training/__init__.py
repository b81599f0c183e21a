"""Training stepvar's own models on the toy world: the BSQ VAE, then the transformer and text encoder.

    train_vae(VAETrainConfig(), "runs/vae", steps)                       -> TrainResult
    train_transformer(GPTTrainConfig(), "runs/gpt", steps, vae="runs/vae") -> TrainResult
    export_embedded("runs/gpt", "assets/toy")                            -> directory of weights

Both trainers are reproducible from a seed, resumable (resume=True continues from the run
directory's checkpoint exactly as an uninterrupted run would), checkpoint atomically, and log
JSON lines. forward_teacher_forced is the one-pass training forward whose logits equal the
cached sampling loop's (tests/test_training.py).
"""

from .common import OptimConfig, TrainResult
from .teacher_forcing import forward_teacher_forced, multiscale_targets, teacher_forced_inputs
from .train_gpt import GPTTrainConfig, export_embedded, load_embedded, toy_arch, train_transformer
from .train_vae import TOY_VAE, VAETrainConfig, load_trained_vae, train_vae

__all__ = [
    "GPTTrainConfig", "OptimConfig", "TOY_VAE", "TrainResult", "VAETrainConfig", "export_embedded",
    "forward_teacher_forced", "load_embedded", "load_trained_vae", "multiscale_targets", "teacher_forced_inputs",
    "toy_arch", "train_transformer", "train_vae",
]
