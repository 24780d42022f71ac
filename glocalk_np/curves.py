"""The per-epoch learning curves of a fitted model as a PNG (matplotlib, an
optional extra: pip install 'glocalk-np[plot]')."""
from .safeio import atomic_output


def plot_history(history, path, title=""):
    """Write to ``path`` (atomically) the RMSE after every epoch of
    ``history`` (EpochRecords): training and each held-out set, pre-training
    then fine-tuning along one axis, the start of fine-tuning marked.
    ValueError if matplotlib is missing or there is no epoch."""
    try:
        import matplotlib
        matplotlib.use("Agg")                 # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'glocalk-np[plot]'") from None
    if not history:
        raise ValueError("the model has no epoch history to plot")
    x = list(range(1, len(history) + 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r.train_rmse for r in history], label="training")
    for name in dict.fromkeys(k for r in history for k in r.metrics):
        points = [(i, r.metrics[name]["rmse"]) for i, r in zip(x, history) if name in r.metrics]
        ax.plot(*zip(*points), label=name)
    first_fine = next((i for i, r in zip(x, history) if r.stage == "finetune"), None)
    if first_fine is not None:
        ax.axvline(first_fine - 0.5, color="grey", linestyle=":",
                   label="fine-tuning starts")
    ax.set_xlabel("epoch (both stages)")
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
