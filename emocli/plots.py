"""PNG timelines of long recordings, written beside nothing emocli did not write: an existing PNG is replaced
only when its metadata says emocli made it."""

from __future__ import annotations

import io
import re
from pathlib import Path

from emocli.atomic import check_folder, write_bytes_atomic
from emocli.errors import ConfigError

_MAKER = "emocli"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_plot_folder(folder: Path) -> None:
    """Fail before any work when `folder` cannot hold the timelines."""
    check_folder(Path(folder), "--plot", Path(folder), writable=False)


def timeline_file_name(item_id: str) -> str:
    """A recording id (a relative path) as one safe file name."""
    stem = re.sub(r"[^\w.-]+", "_", item_id.replace("/", "__")).strip("._") or "recording"
    return f"{stem[-120:]}.timeline.png"


def is_our_png(path: Path) -> bool:
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return head.startswith(_PNG_MAGIC) and b"Software\x00" + _MAKER.encode() in head


def write_timelines(timelines: dict, classes: tuple[str, ...], folder: Path) -> list[Path]:
    """One PNG per recording (`timelines`: id -> its Prediction rows in time order); the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for item_id, rows in timelines.items():
        path = folder / timeline_file_name(item_id)
        if (path.exists() or path.is_symlink()) and not (path.is_file() and not path.is_symlink() and is_our_png(path)):
            raise ConfigError(f"{path} exists and is not a timeline emocli wrote; emocli never replaces other files — "
                              f"choose another --plot folder")
        figure = timeline_figure(item_id, [(p.start, p.end, p.label, p.probs) for p in rows], tuple(classes), None)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": _MAKER})
        import matplotlib.pyplot as plt

        plt.close(figure)
        write_bytes_atomic(path, buffer.getvalue())
        written.append(path)
    return written


def timeline_figure(recording: str, rows: list[tuple[float, float, str, dict[str, float]]],
                    classes: tuple[str, ...], duration: float | None):
    """Emotion along a recording: each utterance a coloured span, every class's probability above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(classes)}
    figure, (probs_ax, spans_ax) = plt.subplots(2, 1, figsize=(12, 4), sharex=True,
                                                gridspec_kw={"height_ratios": [3, 1]})
    for c in classes:
        xs = [x for start, end, _, p in rows for x in (start, end)]
        ys = [p[c] for start, end, _, p in rows for _ in (start, end)]
        probs_ax.plot(xs, ys, color=colours[c], label=c, linewidth=1.2)
    probs_ax.set_ylim(0, 1)
    probs_ax.set_ylabel("probability")
    probs_ax.legend(loc="upper right", ncol=len(classes), fontsize=8)
    probs_ax.set_title(recording)
    for start, end, label, _ in rows:
        spans_ax.axvspan(start, end, color=colours[label])
    spans_ax.set_yticks([])
    spans_ax.set_xlabel("time (s)")
    spans_ax.set_xlim(0, duration or (rows[-1][1] if rows else 1.0))
    figure.tight_layout()
    return figure
