"""PNG plots from the benchmark JSON files.

- rmse_<dataset>.png (from reproduce.py --json, one file or several whose
  runs are pooled per dataset): test RMSE after every epoch, one line per
  seed (dashed: the honest runs' test RMSE), the start of fine-tuning and
  the published number marked.
- speed.png (from speed.py --json): seconds per (loss, gradient) evaluation
  against the number of training ratings, sparse engine vs dense baseline,
  one panel per stage, log-log.

matplotlib is the optional bench extra (pip install glocalk-np[bench]).
"""
import argparse
import json
import sys
from pathlib import Path

from common import PUBLISHED

ENGINES = (("sparse", "o", "tab:blue"), ("dense", "s", "tab:red"))


def pooled_runs(files):
    """dataset -> its runs, over several reproduce.py JSON files (say, seeds
    run in separate invocations)."""
    runs = {}
    for data in files:
        for name, res in data["datasets"].items():
            runs.setdefault(name, []).extend(res["runs"])
    return runs


def rmse_curves(plt, files, out):
    """One figure per dataset: test RMSE per epoch over both stages."""
    from matplotlib import ticker
    paths = []
    for name, runs in pooled_runs(files).items():
        fig, ax = plt.subplots(figsize=(7, 4))
        lows, highs = [], []
        for i, run in enumerate(runs):
            colour = f"C{i}"
            for key, style, label in ((None, "-", f"seed {run['seed']}"),
                                      ("honest", "--", f"seed {run['seed']} honest")):
                if key and key not in run:
                    continue
                hist = run[key]["history"] if key else run["history"]
                y = [r["test"]["rmse"] for r in hist]
                ax.plot(range(1, len(y) + 1), y, style, color=colour, lw=1.2, label=label)
                lows.append(min(y))
                highs.append(y[-1])
        n_pre = sum(r["stage"] == "pretrain" for r in runs[0]["history"])
        ax.axvline(n_pre + 0.5, color="grey", ls=":", lw=1, label="fine-tuning starts")
        if name in PUBLISHED:
            ax.axhline(PUBLISHED[name]["rmse"], color="black", ls="--", lw=0.8,
                       label=f"published {PUBLISHED[name]['rmse']}")
        low = min(lows + [PUBLISHED.get(name, {}).get("rmse", min(lows))])
        ax.set_ylim(low - 0.01, max(highs) + 0.08)   # the early pre-training epochs run off the top
        ax.set(xlabel="epoch (pre-training, then fine-tuning)", ylabel="test RMSE",
               title=f"{name}: test RMSE per epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(out / f"rmse_{name}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def speed_plot(plt, data, out):
    """Seconds per evaluation vs training ratings, sparse and dense, per stage."""
    from matplotlib import ticker
    stages = list(dict.fromkeys(r["stage"] for r in data["results"]))
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for engine, marker, colour in ENGINES:
            pts = sorted((r["nnz"], r["median_s"], r["dataset"]) for r in data["results"]
                         if r["stage"] == stage and r["engine"] == engine and "median_s" in r)
            if not pts:
                continue
            x, y, names = zip(*pts)
            ax.loglog(x, y, marker=marker, color=colour, label=engine)
            for xi, yi, name in pts:
                ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xlabel="training ratings (nnz)", ylabel="seconds per evaluation", title=stage)
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    threads = max(data["threads"])
    fig.suptitle(f"one (loss, gradient) evaluation, {threads} thread(s), {data['machine']['cpu']}",
                 fontsize=9)
    fig.tight_layout()
    path = out / "speed.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reproduce", metavar="JSON", nargs="+", default=[],
                    help="reproduce.py --json output(s); runs of one dataset are pooled")
    ap.add_argument("--speed", metavar="JSON", help="speed.py --json output")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "plots"),
                    help="folder for the PNG files (default bench/plots)")
    args = ap.parse_args(argv)
    if not (args.reproduce or args.speed):
        ap.error("give --reproduce and/or --speed")
    for path in args.reproduce + [args.speed or ""]:
        if path and not Path(path).is_file():
            print(f"error: missing input {path}", file=sys.stderr)
            sys.exit(2)
    try:
        import matplotlib
    except ImportError:
        print("error: plots.py needs matplotlib: pip install glocalk-np[bench]", file=sys.stderr)
        sys.exit(2)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.reproduce:
        written += rmse_curves(plt, [json.loads(Path(f).read_text()) for f in args.reproduce], out)
    if args.speed:
        written += speed_plot(plt, json.loads(Path(args.speed).read_text()), out)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
