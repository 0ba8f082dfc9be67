"""One exception family. Library code raises these; only `cli.py` turns them into a line and an exit code."""


class EmocliError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class CorpusError(EmocliError):
    """The corpus (archive, folder, manifest, label file) cannot be read as promised."""


class ArchiveError(CorpusError):
    """The archive is not an archive, is truncated, or holds members we refuse to unpack."""


class AudioError(EmocliError):
    """One audio file cannot be decoded into usable samples."""


class TextModelError(EmocliError):
    """The text model folder is missing, not BERT-like, or fails its checksum."""


class CacheError(EmocliError):
    """The feature cache is missing, stale, or not an emocli cache."""


class CheckpointError(EmocliError):
    """A run directory or checkpoint is incomplete, foreign, or unsafe to load."""


class ConfigError(EmocliError):
    """Options that contradict each other or the data."""


class EncoderError(EmocliError):
    """A pretrained speech encoder is missing, altered, not a speech encoder, or does not fit a cached stage."""
