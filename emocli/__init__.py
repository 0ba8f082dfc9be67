"""emocli: speech emotion recognition from audio and transcript.

`emocli.load(run)` gives a trained run's model for Python (`emocli.api`); the commands' library functions live in
`emocli.prepare`, `emocli.train` and `emocli.evaluate`. Importing emocli loads neither torch nor a model.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(run_dir, fold=None, device="auto", asr=None):
    """A trained run's model, ready to predict: see `emocli.api.load`."""
    from emocli.api import load as load_run

    return load_run(run_dir, fold=fold, device=device, asr=asr)
