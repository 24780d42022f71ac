"""The command line's argument types (numbers by the rule of numbers in
files, input and output files) and the options several commands share."""
import math

import click

from ..data import PLAIN_INT, DataError, parse_decimal
from ..safeio import OutputError, check_folder, check_input, check_target, shorten
from ..config import CHOICES, DEFAULT_PATIENCE, PRESETS, RANGES, Config
from ..ranking import RANKS


class Number(click.ParamType):
    """An integer (``kind=int``: data.PLAIN_INT) or a finite decimal
    (``kind=float``: data.DECIMAL) within bounds, odd where ``odd``, read by
    the rule of numbers in files: '1_000', other scripts' digits, 'nan' and
    'inf', which int() and float() take, are refused."""

    def __init__(self, kind=int, min=None, max=None, min_open=False, max_open=False,
                 odd=False):
        self.kind, self.min, self.max = kind, min, max
        self.min_open, self.max_open, self.odd = min_open, max_open, odd
        self.name = "integer" if kind is int else "number"

    @classmethod
    def of(cls, name):
        """The values of the hyper-parameter ``name`` (config.RANGES)."""
        r = RANGES[name]
        return cls(r.kind, r.low, r.high, odd=r.odd)

    def convert(self, value, param, ctx):
        text = None
        if isinstance(value, str):
            text = value.strip()
            if self.kind is int:
                if not PLAIN_INT.fullmatch(text):
                    self.fail(f"{shorten(repr(value))} is not an integer (ASCII digits)",
                              param, ctx)
                if len(text) > 30:           # int() refuses 4,300 digits with a long message
                    self.fail(f"{shorten(text)} ({len(text)} digits) is too large", param, ctx)
                value = int(text)
            else:
                try:
                    value = parse_decimal(text)
                except ValueError:
                    self.fail(f"{shorten(repr(value))} is not a decimal number", param, ctx)
        if self.kind is float and not math.isfinite(value):   # a decimal past float64's range
            self.fail(f"{shorten(text if text is not None else str(value))} is too large "
                      "a number", param, ctx)
        low_ok = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high_ok = self.max is None or (value < self.max if self.max_open else value <= self.max)
        if not (low_ok and high_ok):
            self.fail(f"{shorten(value)} is not in {self._range()}", param, ctx)
        if self.odd and value % 2 == 0:
            self.fail(f"{shorten(value)} is not odd", param, ctx)
        return value

    def _range(self):
        low = "(" if self.min_open else "["
        high = ")" if self.max_open else "]"
        return (f"{low}{'-inf' if self.min is None else self.min}, "
                f"{'inf' if self.max is None else self.max}{high}")


class OutFile(click.Path):
    """A file to write: a file name (not a folder's, not too long) in an
    existing folder where a file can be created, not an existing folder,
    device or other non-regular file (a symlink is written through); '-'
    for standard output where ``dash`` (text outputs)."""

    def __init__(self, dash=False):
        super().__init__(dir_okay=False, allow_dash=dash)
        self.dash = dash

    def convert(self, value, param, ctx):
        if value == "-":
            if self.dash:
                return value
            self.fail("'-' (standard output) serves text outputs only; name a file", param, ctx)
        try:
            check_target(value)
        except OutputError as e:
            self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


class OutFolder(click.Path):
    """A folder to write in: an existing one, or one that can be made (see
    safeio.check_folder: not under a file or a symbolic link to nothing)."""

    def __init__(self):
        super().__init__(file_okay=False)

    def convert(self, value, param, ctx):
        try:
            check_folder(value)
        except OutputError as e:
            self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


class InFile(click.Path):
    """A file to read: an existing regular file (a FIFO, a device or a
    folder would hang or mislead the reader); '-' for standard input where
    ``dash`` (text read by safeio.read_text, as safeio.STDIN)."""

    def __init__(self, dash=False):
        super().__init__(exists=True, dir_okay=False, allow_dash=dash)

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if value == "-" and self.allow_dash:
            return value
        try:
            check_input(value, DataError)
        except DataError as e:
            self.fail(str(e), param, ctx)
        return value


INPUT = InFile()


def options(*decorators):
    """One decorator applying several click options, first listed first shown."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def _set_threads(ctx, param, value):
    if value is not None:
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        if value > limit:
            raise click.BadParameter(f"{value} is more than the {limit} threads Numba "
                                     "started with (NUMBA_NUM_THREADS)", ctx, param)
        numba.set_num_threads(value)
    return value


def _hyper(flag, name, text, default=None):
    """A hyper-parameter option, of the values Config takes (config.RANGES,
    CHOICES), whose help names its default: ``default``, else the Config
    default or the preset's."""
    kind = click.Choice(CHOICES[name]) if name in CHOICES else Number.of(name)
    default = default or f"{getattr(Config, name)}, or the preset's"
    return click.option(flag, name, type=kind, default=None, help=f"{text} [default: {default}]")


SEP = click.option("--sep", help="Field separator of text files: ',', tab, '::', ';' or "
                                 "whitespace [default: detected].")
SEED = click.option("--seed", type=Number.of("seed"), default=0, show_default=True,
                    help="Seed of the initialisation and of random splits.")
THREADS = click.option("--threads", type=Number(int, 1), callback=_set_threads,
                       expose_value=False, help="Number of Numba threads [default: all].")
RANK = click.option("--rank", type=click.Choice(RANKS), default="auto", show_default=True,
                    help="The order: picks+rating (the pick model's score and the predicted "
                         "rating, each standardised), picks, or rating (the predicted rating "
                         "alone); auto: picks+rating where the model has a pick model, "
                         "rating where its file predates it.")
QUIET = click.option("--quiet", is_flag=True,
                     help="No progress bars or per-epoch lines; only the summary.")
HYPER = options(
    click.option("--preset", type=click.Choice(sorted(PRESETS)),
                 help="The official hyper-parameters of a paper dataset; the options "
                      "below override them."),
    *(_hyper(flag, name, text) for flag, name, text in (
        ("--hidden", "n_hidden", "Width of the hidden layers."),
        ("--layers", "n_layers", "Number of hidden layers."),
        ("--kernel-dim", "kernel_dim", "Dimension of the local kernel."),
        ("--gk-size", "gk_size", "Side of the global kernel (odd)."),
        ("--lambda-2", "lambda_2", "L2 penalty of the weights."),
        ("--lambda-s", "lambda_s", "Penalty of the local kernels."),
        ("--dot-scale", "dot_scale", "Scale of the global kernel."),
        ("--epochs-pretrain", "epochs_pretrain", "Pre-training epochs."),
        ("--epochs-finetune", "epochs_finetune", "Fine-tuning epochs."),
        ("--iters-pretrain", "iters_pretrain", "L-BFGS-B iterations per pre-training epoch."),
        ("--iters-finetune", "iters_finetune", "L-BFGS-B iterations per fine-tuning epoch."),
        ("--dtype", "dtype", "Compute precision of the network."),
        ("--optimizer", "optimizer", "L-BFGS-B: scipy's, or numba, the same steps at a "
                                     "fraction of scipy's cost on large fits."))),
    _hyper("--patience", "patience",
           "Early stopping: end a stage after N epochs without a better validation RMSE "
           "(0: off; needs a validation set).",
           f"{DEFAULT_PATIENCE} for tune's trials and for fit with a validation set and no "
           "--preset, else 0"),
    _hyper("--scale", "scale",
           "auto: train on the ratings mapped from their training range onto the 1-5 scale "
           "the presets were tuned for (predictions and metrics mapped back; nothing changes "
           "on 1-5 data); none: train on them as given."),
)
