"""The per-epoch learning curves of a fitted model as a PNG (matplotlib, an
optional extra: pip install 'glocalk-np[plot]')."""
import math
import warnings

from .records import epochs_run
from .safeio import atomic_output


def plot_history(history, path, title="", chosen=None, refit=None):
    """Write to ``path`` (atomically) the RMSE after every epoch of
    ``history`` (EpochRecords of the fit that chose the epoch): training and
    each held-out set, pre-training then fine-tuning along one axis, the
    start of fine-tuning and the ``chosen`` fine-tuning epoch marked; with
    ``refit`` (the refit's records, which start with the same pre-training
    epochs) its curves too, dashed. ``title`` (a file name) is drawn as it is
    written: '$' starts no TeX, and what is no printable text (a name's
    bytes that are not UTF-8, control characters) shows as U+FFFD; a
    character the font lacks shows as its box, without a warning. Records
    lacking an RMSE leave a gap. ValueError if matplotlib is missing or
    there is no epoch."""
    try:
        import matplotlib
        matplotlib.use("Agg")                 # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'glocalk-np[plot]'") from None
    if not history:
        raise ValueError("the model has no epoch history to plot")
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {}                    # a set's curves share a colour, the refit's dashed
    for records, prefix, style in ((history, "", "-"), (refit or [], "refit: ", "--")):
        x = range(1, len(records) + 1)
        curves = {"training": [r.train_rmse for r in records]} if records else {}
        for name in dict.fromkeys(k for r in records for k in r.metrics):
            curves[name] = [_rmse(r.metrics.get(name)) for r in records]
        for name, y in curves.items():
            ax.plot(x, y, style, color=colours.setdefault(name, f"C{len(colours)}"),
                    label=f"{prefix}{name}")
    pre = epochs_run(history, "pretrain")
    if pre < len(history):
        ax.axvline(pre + 0.5, color="grey", linestyle=":", label="fine-tuning starts")
    if chosen is not None:
        ax.axvline(pre + chosen, color="black", linestyle="-.", linewidth=1,
                   label=f"chosen: fine-tuning epoch {chosen}")
    ax.set_xlabel("epoch (both stages)")
    ax.set_ylabel("RMSE")
    text = title.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    ax.set_title("".join(c if c.isprintable() else "\ufffd" for c in text), parse_math=False)
    ax.legend()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from")
        fig.tight_layout()
        with atomic_output(path) as f:
            fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _rmse(scores):
    """A held-out set's RMSE in an epoch record, NaN (a gap) where it has none."""
    value = (scores or {}).get("rmse")
    return math.nan if value is None else value
