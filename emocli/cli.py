"""Thin Typer commands: validate, call one library function, print. The only place that exits."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import Callable, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from emocli.errors import EmocliError


def _flags_without_type() -> None:
    """A flag (`--json`) takes no value, so its help row shows no `<bool>`: typer prints one for every option,
    which reads as if `--json true` were expected."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_emocli", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._emocli = True
    TyperOption.display_type_rich = display_type_rich


_flags_without_type()

Device = Literal["auto", "cpu", "cuda"]
ComputeType = Literal["int8", "int8_float32", "float32", "float16", "int8_float16"]

class _OneLineUsageErrors(TyperGroup):
    """Click's usage errors (an unknown option, a value out of range, a choice that is not one) as one `error:` line
    and exit 1, like every other error a user can cause, wherever the app is called from (the `emocli` script,
    `python -m emocli`, a CliRunner); exit 2 stays for bugs."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from typer._click import exceptions as click_errors  # typer's own copy of click (not the click package)

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except KeyboardInterrupt:  # before a command's own handler is in place (while arguments are parsed)
            err.print("interrupted", highlight=False)
            code = 130
        except click_errors.NoArgsIsHelpError as exc:  # `emocli` alone: the help, as click shows it
            exc.show()
            code = exc.exit_code
        except click_errors.ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "emocli"
            err.print(f"[bold red]error:[/] {escape(one_line(exc.format_message()))} (see `{escape(where)} --help`)",
                      markup=True, highlight=False, soft_wrap=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(cls=_OneLineUsageErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Speech emotion recognition from audio and transcript (BERT + ModifiedAlexNet fusion).")


def _show_version(value: bool) -> None:
    if value:
        from emocli import __version__

        print(f"emocli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print emocli's version and exit.")) -> None:
    """Speech emotion recognition from audio and transcript (BERT + ModifiedAlexNet fusion)."""
# Piped output (CI logs, `make demo | tee`) gets room for the wide tables instead of rich's 80 columns.
_PIPED_WIDTH = 120
# No markup by default: file names, transcripts and ids are printed as they are ("[/]" in a transcript is text,
# not a closing tag that crashes rich); the few styled prefixes below ask for markup and escape what they embed.
out = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH, markup=False)
# A line break inside a file name, id or transcript would split one problem over several lines: escaped instead.
# Every control character but tab (C0, DEL, C1: escape sequences that clear a screen or write the clipboard) and
# the Unicode line breaks are shown escaped, as Python writes them, never sent to the terminal as they are.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0),
                                                  0x2028, 0x2029)}


def one_line(text: object) -> str:
    return str(text).translate(_LINE_BREAKS)


# What the user's filesystem does to any command (a read-only or full disk, a missing permission, a file where a
# folder should be): the user's to fix, so one line and exit 1 wherever it surfaces, not an internal error.
_FILESYSTEM_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                      errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EEXIST}


def filesystem_error_line(exc: OSError) -> str | None:
    """One line for an OSError the user's filesystem caused, naming the path and what to do; None for others."""
    if exc.errno not in _FILESYSTEM_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    advice = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
              errno.EMFILE: "raise the open-file limit (ulimit -n)", errno.ENFILE: "raise the open-file limit",
              errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
              errno.EISDIR: "it is a folder; give a file path",
              errno.EEXIST: "something else is in the way there (a file where a folder goes?); choose another path",
              errno.ENAMETOOLONG: "choose a shorter path"}.get(exc.errno, "check its permissions or choose another path")
    return f"cannot use {where}: {exc.strerror or exc}; {advice} (nothing already written was changed)"


def _interrupted(signum: int) -> None:
    err.print("interrupted; nothing already written was changed", highlight=False)
    raise typer.Exit(128 + signum) from None


def handles_errors(command: Callable) -> Callable:
    """EmocliError -> one line on stderr and exit 1; Ctrl-C -> exit 130; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from emocli import signals

        signum = None
        try:
            result = command(*args, **kwargs)
        except EmocliError as exc:
            if signals.received is not None:  # the failure came from the interruption (a killed worker pool)
                _interrupted(signals.received)
            err.print(f"[bold red]error:[/] {escape(one_line(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            _interrupted(getattr(exc, "signum", 2))
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug of ours: still one line, with a way to see the traceback
            if signals.received is not None:  # e.g. a half-imported module after a signal landed in an import
                _interrupted(signals.received)
            line = filesystem_error_line(exc) if isinstance(exc, OSError) else None
            if line is not None:
                err.print(f"[bold red]error:[/] {escape(one_line(line))}", markup=True, highlight=False,
                          soft_wrap=True)
                raise typer.Exit(1) from None
            if os.environ.get("EMOCLI_DEBUG"):
                raise
            err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(one_line(exc))} (rerun with "
                      f"EMOCLI_DEBUG=1 for the traceback and report it)", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            signum, signals.received = signals.received, None  # reported once (tests run many commands per process)
        if signum is not None:  # its exception was swallowed on the way (raised in a GC callback)
            err.print("interrupted after the work was done; everything was written", highlight=False)
            raise typer.Exit(128 + signum)
        return result

    return wrapper


_AUDIO_ENCODER_HELP = ("alexnet (the paper's CNN on log-mel) | whisper (Whisper tiny.en, offline package) | "
                       "whisper-base | a local CTranslate2 Whisper folder | a local Hugging Face wav2vec2/HuBERT/WavLM/"
                       "Whisper folder.")
_COMPUTE_TYPE_HELP = ("CTranslate2 Whisper precision: int8 (fastest on CPU, measured as accurate as float32) | "
                      "int8_float32 | float32 | float16 | int8_float16 (CUDA)")


@app.command()
@handles_errors
def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to write IEMOCAP_full_release.<format> into."),
    per_class: int = typer.Option(100, "--per-class", min=1, help="Utterances per class (ang, hap+exc, sad, neu)."),
    seed: int = typer.Option(0, "--seed"),
    fmt: Literal["tar.gz", "tgz", "tar", "zip", "dir"] = typer.Option("tar.gz", "--format",
                                                                       help="Archive format, or dir: a folder."),
    mean_seconds: float = typer.Option(2.5, "--mean-seconds", min=0.3, help="Mean utterance duration."),
    speech: Literal["espeak", "tones"] = typer.Option("espeak", "--speech", help="espeak: each transcript spoken by eSpeak NG (ten voices, "
                               "emotion in pitch, range, rate and loudness) | tones: wordless babble (fast)."),
    as_json: bool = typer.Option(False, "--json", help="Print the generator's summary as one JSON object."),
) -> None:
    """Generate a corpus in IEMOCAP_full_release's exact layout (IEMOCAP itself cannot be shipped).

    Example: emocli synth data/corpus --per-class 50
    """
    from emocli.synth import SynthConfig, synthesize

    if fmt not in ("tar.gz", "tgz", "tar", "zip", "dir"):
        raise EmocliError(f"--format {fmt!r} is not one of tar.gz, tgz, tar, zip, dir")
    if speech not in ("espeak", "tones"):
        raise EmocliError(f"--speech {speech!r} is not one of espeak, tones")
    truth = synthesize(out_dir, SynthConfig(per_class=per_class, seed=seed, fmt=fmt, mean_seconds=mean_seconds,
                                            speech=speech))
    counts = truth.four_class_counts()
    info = {"archive": str(truth.archive), "utterances_with_wav": len(truth.codes), "four_class": counts,
            "dialogs": len(truth.dialogs)}
    if as_json:
        print(json.dumps(info))
    else:
        out.print(f"wrote {truth.archive} ({len(truth.codes)} utterances with audio, 4-class: {counts})",
                  highlight=False)


@app.command()
@handles_errors
def prepare(
    source: Path = typer.Argument(..., metavar="SOURCE", help="IEMOCAP_full_release .tar.gz/.tgz/.tar/.zip, its folder, or a manifest CSV/TSV."),
    cache_path: Path = typer.Option(Path("data/cache.h5"), "--cache", help="HDF5 cache to create or reuse."),
    text_model: str = typer.Option("all-MiniLM-L6-v2", "--text-model",
                                   help="all-MiniLM-L6-v2 (offline package) or a local BERT folder."),
    labels: Literal["auto", "4class", "4class-noexc", "6class", "all", "manifest"] = typer.Option("auto", "--labels", help="auto: IEMOCAP's 4class, or a manifest's own labels | "
                               "4class (exc merged into hap) | 4class-noexc | 6class (ang hap sad neu exc fru) | "
                               "all (every IEMOCAP category but xxx) | manifest (the manifest's label column)."),
    tags: Literal["keep", "strip"] = typer.Option("keep", "--tags", help="Non-speech tags like [LAUGHTER]."),
    n_mels: int = typer.Option(128, "--n-mels", min=64, max=256, help="Mel bands (ModifiedAlexNet needs at least 63)."),
    max_seconds: float = typer.Option(15.0, "--max-seconds", min=0.5, help="Longer audio is truncated."),
    workers: int = typer.Option(0, "--workers", min=0, help="Feature processes; 0 = one per core."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where archives are unpacked (default: beside the cache)."),
    transcripts: Literal["gold", "asr"] = typer.Option("gold", "--transcripts", help="gold: the corpus's transcripts | asr: recognised "
                                    "from the audio by offline Whisper (for corpora without transcripts, or to "
                                    "measure gold against recognised text; the gold ones are kept for eval's WER)."),
    asr_model: str = typer.Option("whisper", "--asr-model", help="With --transcripts asr: whisper (tiny.en) | "
                                  "whisper-base | a local CTranslate2 Whisper folder."),
    keep_audio: bool = typer.Option(False, "--keep-audio", help="Keep an archive's unpacked audio after the cache is "
                                    "written (default: removed; prepare unpacks again when a new stage needs it)."),
    audio_encoder: Optional[str] = typer.Option(None, "--audio-encoder", help=_AUDIO_ENCODER_HELP + " Computes its "
                                                "embedding stage now, while the audio is at hand (train would too)."),
    compute_type: ComputeType = typer.Option("int8", "--compute-type", help=_COMPUTE_TYPE_HELP),
    device: Device = typer.Option("auto", "--device", help="For the embedding stage."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Read the corpus and write spectrograms + token ids into one fingerprinted HDF5 cache (and, with
    --audio-encoder, a pretrained encoder's hidden states into a stage beside it).

    Example: emocli prepare IEMOCAP_full_release.tar.gz --cache data/iemocap.h5 --audio-encoder whisper
    """
    from emocli.features import FeatureConfig
    from emocli.prepare import PrepareConfig
    from emocli.prepare import prepare as run_prepare

    config = PrepareConfig(text_model=text_model, label_set=labels, tags=tags, workers=workers,
                           features=FeatureConfig(n_mels=n_mels, max_seconds=max_seconds),
                           audio_encoder=audio_encoder or "", compute_type=compute_type, device=device,
                           keep_audio=keep_audio, transcripts=transcripts, asr_model=asr_model)
    if as_json:
        result = run_prepare(source, cache_path, config, workdir)
        print(json.dumps(result.to_json()))
        return
    with _progress() as callback:
        result = run_prepare(source, cache_path, config, workdir, progress=callback)
    for line in result.problems[:20]:
        err.print(f"skipped {one_line(line)}", highlight=False, soft_wrap=True)
    if len(result.problems) > 20:
        err.print(f"... and {len(result.problems) - 20} more skipped (see --json for all)", highlight=False)
    _print_prepare_summary(result)


class _progress:
    """A rich progress bar on stderr, fed by the library's (stage, done, total) callback."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=err, transient=True)
        self._tasks: dict[str, int] = {}
        self._bar.__enter__()
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done, total=total)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


def _print_prepare_summary(result) -> None:
    s = result.summary
    state = "cache hit: inputs unchanged, nothing to do" if result.cache_hit else "cache written"
    out.print(f"{state}: {result.cache_path} (fingerprint {result.fingerprint}, {result.seconds:.2f} s)", highlight=False)
    table = Table(title=f"{s['utterances']} utterances, label set {s['label_set']}")
    from emocli.corpus.records import get_label_set

    classes = s.get("classes") or get_label_set(s["label_set"]).classes  # the set's order: ang, hap, sad, neu
    display = s.get("display") or get_label_set(s["label_set"]).display
    table.add_column("session")
    for c in classes:
        table.add_column(display.get(c, c), justify="right")
    table.add_column("total", justify="right")
    for session, counts in s["per_session"].items():
        table.add_row(session, *[str(counts.get(c, 0)) for c in classes], str(sum(counts.values())))
    table.add_row("all", *[str(s["per_class"].get(c, 0)) for c in classes], str(s["utterances"]), style="bold")
    out.print(table)
    if s["skipped"]:
        skipped = Table(title="skipped")
        skipped.add_column("reason")
        skipped.add_column("count", justify="right")
        for reason, n in s["skipped"].items():
            skipped.add_row(reason, str(n))
        out.print(skipped)


@app.command()
@handles_errors
def train(
    cache_path: Path = typer.Argument(..., metavar="CACHE", help="An HDF5 cache made by `emocli prepare`."),
    run_dir: Optional[Path] = typer.Option(None, "--run", "--run-dir",
                                           help="Run directory (default runs/<modality>-<protocol>). Under torchrun "
                                                "write --run-dir: torchrun reads --run as its own --run-path."),
    modality: Literal["both", "audio", "text"] = typer.Option("both", "--modality",
                                                              help="both (fusion) | audio | text: single-view baselines."),
    protocol: Literal["random", "loso", "loso-speaker", "speaker-folds", "all"] = typer.Option(
        "random", "--protocol", help="random: the paper's repeated 90/10 splits (speakers shared) | loso: leave one "
        "session out | loso-speaker: leave one speaker out | speaker-folds: --folds groups of speakers | all: one "
        "final model on all the data (for predict and export; see --like)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Random splits (random protocol)."),
    folds: int = typer.Option(5, "--folds", min=2, help="Speaker groups (speaker-folds protocol), class-balanced."),
    like: Optional[Path] = typer.Option(None, "--like", help="With --protocol all: every setting of this "
                                        "cross-validated run, for the median of the epochs its folds selected."),
    task: Literal["classes", "dimensions", "both"] = typer.Option(
        "classes", "--task", help="classes: emotion categories | dimensions: valence, arousal, dominance "
        "(regression, CCC loss) | both at once."),
    epochs: int = typer.Option(50, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate (the paper: 1e-4)."),
    step_size: int = typer.Option(30, "--step-size", min=1, help="StepLR step in epochs (the paper: 30)."),
    gamma: float = typer.Option(0.1, "--gamma", help="StepLR factor (the paper: 0.1)."),
    fusion: Literal["concat", "gated", "xattn"] = typer.Option("concat", "--fusion", help="concat (the paper) | gated | "
                                                                "xattn (cross-modal attention)."),
    audio_encoder: str = typer.Option("alexnet", "--audio-encoder", help=_AUDIO_ENCODER_HELP),
    compute_type: ComputeType = typer.Option("int8", "--compute-type", help=_COMPUTE_TYPE_HELP),
    audio_hidden: int = typer.Option(256, "--audio-hidden", min=1, help="Pretrained encoders: width of the head "
                                                                        "over their frames."),
    audio_context: int = typer.Option(0, "--audio-context", min=0, max=8, help="Pretrained encoders: transformer "
                                      "layers over their frames before pooling (0: none)."),
    finetune_audio: bool = typer.Option(False, "--finetune-audio", help="Fine-tune a Hugging Face speech encoder "
                                        "folder end to end (its CNN front end stays frozen); meant for a GPU."),
    audio_lr: float = typer.Option(0.0, "--audio-lr", min=0.0, help="With --finetune-audio: the encoder's own "
                                                                    "learning rate (e.g. 3e-5; 0 = --lr)."),
    freeze_text: bool = typer.Option(False, "--freeze-text", help="CPU-friendly: frozen encoder, embeddings computed once."),
    text_model: Optional[str] = typer.Option(None, "--text-model", help="Default: the cache's own text model."),
    audio_width: float = typer.Option(1.0, "--audio-width", help="ModifiedAlexNet width (1.0 = AlexNet)."),
    audio_init: Optional[Path] = typer.Option(None, "--alexnet-weights",
                                              help="Local torchvision AlexNet state dict (.safetensors/.pth) to start from."),
    modality_dropout: float = typer.Option(0.2, "--modality-dropout",
                                           help="Training only: chance of hiding the transcript, so audio alone works."),
    dropout: float = typer.Option(0.3, "--dropout"),
    class_weighted: bool = typer.Option(False, "--class-weighted", help="Inverse-frequency class weights in the loss."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", min=0.0, help="Adam's L2 penalty (the paper: 0)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Of the training part, for best-epoch selection."),
    last_epoch: bool = typer.Option(False, "--last-epoch", help="Test the last epoch instead of the best on validation."),
    seed: int = typer.Option(0, "--seed", min=0),
    device: Device = typer.Option("auto", "--device"),
    precision: Literal["auto", "fp32", "bf16"] = typer.Option("auto", "--precision", help="auto: bf16 on CUDA."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Train the fusion model (or a single-view baseline) with the paper's recipe; rerun to resume.

    Example: emocli train data/cache.h5 --run runs/loso --protocol loso
    """
    from emocli.api import model_config_for
    from emocli.train import TrainConfig, protocol_warnings
    from emocli.train import train as run_training

    if modality == "text" and (audio_encoder != "alexnet" or finetune_audio):
        raise EmocliError("--audio-encoder and --finetune-audio choose the audio branch; a --modality text model has "
                          "none — drop them, or train --modality both or audio")
    if audio_lr and not finetune_audio:
        raise EmocliError("--audio-lr is the fine-tuned speech encoder's learning rate; add --finetune-audio, or drop it")
    if like is not None:  # every setting from the cross-validated run
        from emocli.train import final_settings

        if protocol != "all":
            raise EmocliError("--like makes a final model from a cross-validated run's settings; add --protocol all")
        model_config, train_config = final_settings(like, device=device, precision=precision)
    else:
        model_config = model_config_for(
            cache_path, modality=modality, fusion=fusion, audio_encoder=audio_encoder, compute_type=compute_type,
            finetune_audio=finetune_audio, audio_hidden=audio_hidden, audio_context=audio_context,
            audio_width=audio_width, **({"text_model": text_model} if text_model else {}), freeze_text=freeze_text,
            dropout=dropout, modality_dropout=modality_dropout if modality == "both" else 0.0, task=task)
        train_config = TrainConfig(protocol=protocol, repeats=repeats, folds=folds, epochs=epochs,
                                   batch_size=batch_size, lr=lr, step_size=step_size, gamma=gamma,
                                   class_weighted=class_weighted, seed=seed, weight_decay=weight_decay,
                                   audio_lr=audio_lr, device=device, precision=precision, val_fraction=val_fraction,
                                   select_best=not last_epoch, audio_init=str(audio_init or ""))
    train_config.validate()
    run_dir = run_dir or Path("runs") / f"{model_config.modality}-{protocol}"
    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        for line in protocol_warnings(train_config):
            err.print(f"[yellow]warning:[/] {escape(one_line(line))}", markup=True, highlight=False, soft_wrap=True)
    if as_json or not main_rank:
        summary = run_training(cache_path, run_dir, model_config, train_config)
    else:
        with _TrainDisplay() as display:
            summary = run_training(cache_path, run_dir, model_config, train_config, progress=display.update)
    if not main_rank:
        return
    if as_json:
        print(json.dumps(summary.to_json()))
        return
    _print_train_summary(summary)


class _TrainDisplay:
    """A live rich display: fold, epoch, loss, accuracy, utterances/s."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=err)
        self._tasks: dict[str, int] = {}
        self._bar.__enter__()
        return self

    def update(self, fold: str, epoch: int, epochs: int, loss: float, acc: float | None, speed: float) -> None:
        if fold not in self._tasks:
            self._tasks[fold] = self._bar.add_task(fold, total=epochs, stats="")
        accuracy = f"  train accuracy {100 * acc:.1f} %" if acc is not None else ""
        self._bar.update(self._tasks[fold], completed=epoch, total=epochs,
                         stats=f"loss {loss:.3f}{accuracy}  {speed:,.0f} utt/s")

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


def _print_train_summary(summary) -> None:
    for line in summary.resumed:
        err.print(f"resumed: {line}", highlight=False)
    if not summary.aggregate:  # --protocol all: nothing held out
        f = summary.folds[0]
        out.print(f"final model trained on {f.n_train} utterances for {f.epoch} epochs (nothing held out: its "
                  f"expected scores are those of the cross-validated run it was made like): {summary.run_dir}",
                  highlight=False, soft_wrap=True)
        return
    keys = [k for k in ("wa", "ua", "macro_f1", "ccc") if k in summary.aggregate]
    names = {"wa": "WA %", "ua": "UA %", "macro_f1": "macro-F1 %", "ccc": "CCC (V/A/D mean)"}
    scale = {"wa": 100, "ua": 100, "macro_f1": 100, "ccc": 1}
    digits = {"wa": 1, "ua": 1, "macro_f1": 1, "ccc": 3}
    table = Table(title=f"{summary.protocol} protocol, run {summary.run_dir}",
                  caption="held-out test part of each fold; ± population std (ddof 0) over folds")
    for col in ("fold", "test n", *[names[k] for k in keys], "epoch tested"):
        table.add_column(col, justify="right" if col != "fold" else "left")
    for f in summary.folds:
        table.add_row(f.name, str(f.n_test), *[f"{scale[k] * getattr(f, k):.{digits[k]}f}" for k in keys], str(f.epoch))
    agg = summary.aggregate
    table.add_row("mean ± std", "", *[f"{scale[k] * agg[k]['mean']:.{digits[k]}f} ± {scale[k] * agg[k]['std']:.{digits[k]}f}"
                                      for k in keys], "", style="bold")
    out.print(table)


@app.command("eval")
@handles_errors
def evaluate(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run directory made by `emocli train`."),
    cache_path: Optional[Path] = typer.Option(None, "--cache", help="Score every fold's model on this whole other "
                                                                    "prepared corpus instead of its held-out part."),
    device: Device = typer.Option("auto", "--device", help="Only with --cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Accuracy (WA), unweighted accuracy (UA), macro-F1 and the confusion matrix, per fold and mean ± std
    (population std over folds); CCC per dimension and a scatter plot for a dimensional model.

    Example: emocli eval runs/loso
    """
    from emocli.evaluate import evaluate_on_cache, evaluate_run, save_report

    report = evaluate_on_cache(run_dir, cache_path, device=device) if cache_path else evaluate_run(run_dir)
    # The scores are shown before the files are written: a read-only run folder still gives the user its report,
    # then one line on why the files could not be saved.
    if as_json:
        print(json.dumps(report.to_json()), flush=True)
    else:
        if report.has_classes:
            print_eval_report(report)
        if report.dimensions is not None:
            _print_dimensions(report)
        if report.transcripts is not None:
            _print_transcripts_line(report)
        if report.unfinished:
            err.print(f"[yellow]warning:[/] left out unfinished fold(s): {escape(', '.join(report.unfinished))}",
                      markup=True, highlight=False)
    written = save_report(report, run_dir)
    if not as_json:
        out.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)


def _print_transcripts_line(report) -> None:
    t = report.transcripts
    wer = "n/a (no gold words)" if t["wer"] is None else f"{100 * t['wer']:.1f} %"
    line = f"transcripts recognised from the audio: word error rate {wer} against the corpus's own"
    if "with_gold" in t:
        g, m, s = t["with_gold"], report.mean, report.std
        line += (f"; UA with recognised text {100 * m['ua']:.1f} ± {100 * s['ua']:.1f}, with the gold text "
                 f"{100 * g['ua']['mean']:.1f} ± {100 * g['ua']['std']:.1f} (WA {100 * m['wa']:.1f} vs "
                 f"{100 * g['wa']['mean']:.1f})")
    out.print(line, highlight=False, soft_wrap=True)


def _print_dimensions(report) -> None:
    from emocli.corpus.records import DIMENSIONS

    table = Table(title=f"concordance correlation coefficient (CCC, -1..1) — {report.source}",
                  caption="± population std (ddof 0) over folds")
    table.add_column("fold")
    for name in DIMENSIONS:
        table.add_column(name, justify="right")
    for fold, scores in report.dimensions["per_fold"].items():
        table.add_row(fold, *[f"{scores[d]:.3f}" for d in DIMENSIONS])
    m, s = report.dimensions["mean"], report.dimensions["std"]
    table.add_row("mean ± std", *[f"{m[d]:.3f} ± {s[d]:.3f}" for d in DIMENSIONS], style="bold")
    out.print(table)


def print_eval_report(report) -> None:
    names = report.display_names
    scores = Table(title=f"{report.run_dir} — {report.source}", caption="% ; ± population std (ddof 0) over folds")
    for col in ("fold", "n", "WA %", "UA %", "macro-F1 %"):
        scores.add_column(col, justify="left" if col == "fold" else "right")
    for f in report.folds:
        scores.add_row(f.name, str(f.n), f"{100 * f.wa:.1f}", f"{100 * f.ua:.1f}", f"{100 * f.macro_f1:.1f}")
    m, s = report.mean, report.std
    scores.add_row("mean ± std", "", *[f"{100 * m[k]:.1f} ± {100 * s[k]:.1f}" for k in ("wa", "ua", "macro_f1")],
                   style="bold")
    out.print(scores)
    confusion = Table(title="confusion matrix, % of each true class (rows true, columns predicted), mean over folds")
    confusion.add_column("true \\ predicted")
    for name in names:
        confusion.add_column(name, justify="right")
    confusion.add_column("precision", justify="right")
    confusion.add_column("recall", justify="right")
    for i, (cls, name) in enumerate(zip(report.classes, names)):
        cells = [Text(f"{v:.1f}", style="bold" if j == i else "") for j, v in enumerate(m["confusion"][i])]
        confusion.add_row(name, *cells, f"{100 * m['precision'][cls]:.1f}", f"{100 * m['recall'][cls]:.1f}")
    out.print(confusion)


@app.command()
@handles_errors
def compare(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="Run directories to put side by side."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as one JSON list (scores as fractions 0-1)."),
) -> None:
    """Side by side: WA, UA and macro-F1 (mean ± population std over folds) of several runs, e.g. fusion vs
    single views.

    Example: emocli compare runs/fused runs/audio runs/text
    """
    from emocli.bundle import open_run
    from emocli.evaluate import evaluate_run

    rows = []
    for run in runs:
        config = open_run(run).config
        if config.train.get("protocol") == "all":  # a final model: nothing held out to put side by side
            err.print(f"{one_line(run)}: a final model (--protocol all), nothing held out to compare; left out",
                      highlight=False, soft_wrap=True)
            continue
        report = evaluate_run(run)
        dims = report.dimensions
        rows.append({"run": run.name or str(run), "modality": config.model.modality, "fusion": config.model.fusion,
                     "audio_encoder": _audio_encoder_name(config.model),
                     "protocol": config.train["protocol"],
                     "folds": len(report.folds) or len((dims or {}).get("per_fold", {})),
                     **{k: {"mean": report.mean[k], "std": report.std[k]} for k in ("wa", "ua", "macro_f1")
                        if report.has_classes},
                     **({"ccc": {"mean": dims["mean"], "std": dims["std"]}} if dims else {})})
    if not rows:
        raise EmocliError("no cross-validated run among them; compare runs trained with a protocol that holds "
                          "data out (random, loso, loso-speaker, speaker-folds)")
    if as_json:
        print(json.dumps(rows))
        return
    with_ccc = any("ccc" in r for r in rows)
    table = Table(title="held-out scores, % (mean ± population std over folds)")
    scores = ("WA", "UA", "macro-F1", *(("CCC V/A/D",) if with_ccc else ()))
    for col in ("run", "modality", "audio encoder", "protocol", "folds", *scores):
        table.add_column(col, justify="right" if col in ("folds", *scores) else "left")
    best = max((r["ua"]["mean"] for r in rows if "ua" in r), default=None)
    for r in rows:
        cells = [f"{100 * r[k]['mean']:.1f} ± {100 * r[k]['std']:.1f}" if k in r else "-"
                 for k in ("wa", "ua", "macro_f1")]
        if with_ccc:
            cells.append(" / ".join(f"{v:.2f}" for v in r["ccc"]["mean"].values()) if "ccc" in r else "-")
        style = "bold green" if "ua" in r and r["ua"]["mean"] == best else None
        modality = f"{r['modality']} ({r['fusion']})" if r["modality"] == "both" else r["modality"]
        table.add_row(r["run"], modality, r["audio_encoder"], r["protocol"], str(r["folds"]), *cells, style=style)
    out.print(table)


@app.command()
@handles_errors
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run directory made by `emocli train`."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write (replaced only when emocli wrote it)."),
    fmt: Literal["onnx"] = typer.Option("onnx", "--format", help="onnx: one graph (both branches, fusion, head) "
                                        "for onnxruntime, with a numpy front end and a runner beside it."),
    fold: Optional[str] = typer.Option(None, "--fold", help="Which fold's model (default: the final model of "
                                       "train --protocol all, else the run's first fold)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as one JSON object."),
) -> None:
    """Export a trained model for deployment: a folder that onnxruntime and numpy run without torch or emocli
    (`python onnx_runner.py FOLDER clip.wav` or `OnnxEmotionModel(FOLDER).predict(wave, rate, text)`).

    Example: emocli export runs/final --out exported/final
    """
    from emocli.export import export_onnx

    report = export_onnx(run_dir, out_dir, fold)
    if as_json:
        print(json.dumps({"folder": str(report.folder), "format": fmt, "fold": report.fold,
                          "onnx_sha256": report.onnx_sha256, "inputs": list(report.inputs),
                          "outputs": list(report.outputs), "max_abs_diff": report.max_abs_diff}))
        return
    out.print(f"wrote {report.folder} (fold {report.fold}; model.onnx {report.onnx_bytes / 1e6:.1f} MB, outputs "
              f"{', '.join(report.outputs)}; onnxruntime vs torch: max |difference| {report.max_abs_diff:.1e})",
              highlight=False, soft_wrap=True)


def _audio_encoder_name(model) -> str:
    """alexnet, a packaged encoder's name, or a folder's last part; "-" for a text-only model."""
    if not model.uses_audio:
        return "-"
    if model.audio_upstream:
        return Path(model.audio_upstream.get("name", "?")).name
    return model.audio_encoder


@app.command()
@handles_errors
def predict(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run directory made by `emocli train`."),
    source: Path = typer.Argument(..., metavar="INPUT", help="A wav file, or a folder searched recursively for audio files."),
    text: Optional[str] = typer.Option(None, "--text", help="Transcript of the single input file."),
    transcripts: Optional[Path] = typer.Option(None, "--transcripts",
                                               help="CSV/TSV with columns id,text (id = file stem or relative path)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write every prediction to a .csv or .jsonl file."),
    asr: Literal["auto", "off"] = typer.Option("auto", "--asr", help="auto: transcribe files without a transcript (offline Whisper) | "
                            "off: predict them from audio alone. Each row says where its text came from."),
    asr_model: str = typer.Option("whisper", "--asr-model", help="whisper (tiny.en, English) | whisper-base "
                                  "(multilingual) | a local CTranslate2 Whisper folder."),
    segment: Literal["auto", "always", "never"] = typer.Option("auto", "--segment", help="auto: recordings longer than --max-seconds are cut into "
                                "utterances by voice-activity detection, each one a row with start and end | always "
                                "| never: classify only the first --max-seconds."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0.5,
                                                help="Longest audio classified as one utterance (default: the run's, "
                                                     "as prepare used)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Folder for a PNG timeline of each segmented recording."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    fold: Optional[str] = typer.Option(None, "--fold", help="Which fold's model (default: the final model of "
                                       "train --protocol all, else the run's first fold; stderr says which)."),
    device: Device = typer.Option("auto", "--device"),
    show: int = typer.Option(50, "--show", min=0, help="Rows of the table printed (all go to --output)."),
    as_json: bool = typer.Option(False, "--json", help="Print every prediction as one JSON object per line (JSON "
                                 "lines) instead of the tables; problems still go to stderr."),
) -> None:
    """Predict emotions for one recording (with --text) or a folder of recordings; long recordings become a
    timeline of utterances.

    Example: emocli predict runs/final recordings/ --output predictions.csv
    """
    import math

    from emocli.asr import ASR_MODES, AsrConfig
    from emocli.features import parallel_map
    from emocli.predict import (SEGMENT_MODES, Failure, Predictor, check_output_path, collect_inputs,
                                expand_recordings, write_predictions)

    if asr not in ASR_MODES:
        raise EmocliError(f"--asr {asr!r} is not one of {', '.join(ASR_MODES)}")
    if segment not in SEGMENT_MODES:
        raise EmocliError(f"--segment {segment!r} is not one of {', '.join(SEGMENT_MODES)}")
    if max_seconds is not None and not math.isfinite(max_seconds):
        raise EmocliError(f"--max-seconds {max_seconds} must be a finite number of seconds")
    if output is not None:
        check_output_path(output, [transcripts, source])
    if plot is not None:
        from emocli.plots import check_plot_folder

        check_plot_folder(plot)
    items = collect_inputs(source, text, transcripts)
    predictions, failed = [], set()

    def notice(item_id: str, message: str) -> None:
        err.print(f"{one_line(item_id)}: {one_line(message)}", highlight=False, soft_wrap=True)

    with parallel_map(len(items), chunksize=4) as feature_map:  # forked before torch loads the model
        predictor = Predictor.from_run(run_dir, fold, device, max_seconds,
                                       AsrConfig(model=asr_model) if asr == "auto" else None)
        expanded = expand_recordings(items, predictor.window_s, segment, notice=notice)
        for result in predictor.predict(expanded, batch_size, feature_map):
            if isinstance(result, Failure):
                failed.add(result.id)
                err.print(f"skipped {one_line(result.id)}: {one_line(result.reason)}", highlight=False, soft_wrap=True)
            else:
                predictions.append(result)
    if output is not None:  # even when every file failed: an older file must not stay looking current
        write_predictions(predictions, predictor.classes, output)
    # With --json, stdout holds nothing but the JSON lines: what was written is said on stderr.
    said = err if as_json else out
    if as_json:
        for p in predictions:
            print(json.dumps(p.to_json(), ensure_ascii=False), flush=False)
        sys.stdout.flush()
    else:
        _print_predictions(predictions, predictor.classes, show)
    timelines = _timelines(predictions) if predictor.classes else {}
    if plot is not None and not predictor.classes and any(p.start is not None for p in predictions):
        err.print("--plot draws emotion timelines; this model predicts dimensions only, so none was drawn (the rows "
                  "carry valence, arousal and dominance with start and end)", highlight=False, soft_wrap=True)
    if timelines and not as_json:
        _print_timeline_summary(timelines, predictor.classes)
    if plot is not None and timelines:
        from emocli.plots import write_timelines

        for path in write_timelines(timelines, predictor.classes, plot):
            said.print(f"wrote {path}", highlight=False)
    if output is not None:
        said.print(f"wrote {len(predictions)} predictions to {output}", highlight=False)
    if fold is None and len(predictor.config.folds) > 1:  # with the results, not among the problems on stderr
        said.print(f"predicted by the model of fold {predictor.fold} (one of {len(predictor.config.folds)}; choose "
                   f"with --fold, or make one final model with `emocli train CACHE --protocol all --like "
                   f"{run_dir}`)", highlight=False, soft_wrap=True)
    if failed:
        err.print(f"{len(failed)} of {len(items)} file(s) could not be predicted", highlight=False)
        raise typer.Exit(1)


def _timelines(predictions) -> dict:
    """The segmented recordings' rows, by recording, in time order."""
    by_id: dict = {}
    for p in predictions:
        if p.start is not None:
            by_id.setdefault(p.id, []).append(p)
    return by_id


def _print_timeline_summary(timelines: dict, classes) -> None:
    from emocli.longform import time_shares

    table = Table(title="share of speech time per emotion, per recording")
    for name in ("recording", "utterances", "speech (s)", *classes):
        table.add_column(name, justify="left" if name == "recording" else "right")
    for item_id, rows in timelines.items():
        shares = time_shares([(p.start, p.end, p.label) for p in rows], tuple(classes))
        speech = sum(p.end - p.start for p in rows)
        table.add_row(one_line(item_id), str(len(rows)), f"{speech:.1f}", *[f"{100 * shares[c]:.0f} %" for c in classes])
    out.print(table)


def _print_predictions(predictions, classes, show: int) -> None:
    table = Table(title=f"{len(predictions)} prediction(s)")
    table.add_column("file")
    if any(p.start is not None for p in predictions[:show]):
        table.add_column("time (s)")
    dimensions = list(predictions[0].dimensions or {}) if predictions else []
    if classes:
        table.add_column("emotion")
    for c in classes:
        table.add_column(f"p({c})", justify="right")
    for d in dimensions:
        table.add_column(d, justify="right")
    table.add_column("text")
    timed = any(p.start is not None for p in predictions[:show])
    for p in predictions[:show]:
        if p.audio_only:
            shown = "(audio only)"
        else:
            shown = (p.text if len(p.text) <= 40 else p.text[:39] + "…") + (" (asr)" if p.text_source == "asr" else "")
        when = [f"{p.start:.1f}-{p.end:.1f}" if p.start is not None else ""] if timed else []
        table.add_row(one_line(p.id), *when, *([p.label] if classes else []), *[f"{p.probs[c]:.2f}" for c in classes],
                      *[f"{p.dimensions[d]:.2f}" for d in dimensions], one_line(shown))
    if len(predictions) > show:
        table.caption = f"first {show} shown"
    out.print(table)


def _run_app() -> int:
    """The CLI's exit status (usage errors as one `error:` line and 1: `_OneLineUsageErrors`)."""
    code = app(standalone_mode=False)
    return code if isinstance(code, int) else 0


def main() -> None:
    from emocli import signals

    signals.install()
    try:
        sys.exit(_run_app())
    except SystemExit as done:
        if done.code in (0, None) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # A torchrun rank whose work is done and written leaves without the interpreter's teardown: on a loaded
            # machine gloo's threads were seen to abort it there ("terminate called without an active exception",
            # exit -6) after everything had succeeded, failing the whole job.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


if __name__ == "__main__":
    main()
