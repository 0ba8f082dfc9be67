"""emocli: speech emotion recognition from audio and transcript."""

__version__ = "0.1.0"
