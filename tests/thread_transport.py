"""A second transport for the sharded engine (glocalk_np/engines/sharded.py),
all that one implements: the shares are objects of this process, each
called in a thread of its own (and evaluating in the Share's own thread),
one share at a time in share order, so that no two Numba kernels run at
once and a share's Numba thread count stays in its threads.
tests/test_engines.py and tests/test_transport.py hold the sharded engine
over it to the contract and to the CPU engine."""
from concurrent.futures import ThreadPoolExecutor

from glocalk_np.engines.base import EngineFailure
from glocalk_np.engines.sharded import Share, ShardedEngine, Transport


class ThreadTransport(Transport):
    """Shares in threads of this process, each with ``threads`` Numba
    threads (None: as many as Numba has)."""

    def __init__(self, threads=None):
        self.threads = threads

    def places(self):
        return ["this process"]

    def open(self, workers, shares):
        self.workers = workers
        self.pools = [ThreadPoolExecutor(1, thread_name_prefix=f"share-{k}")
                      for k in range(len(shares))]
        self.shares = [Share(**spec, threads=self.threads) for spec in shares]

    def each(self, method, args):
        return [self.call(k, method, *a) for k, a in enumerate(args)]

    def call(self, k, method, *args):
        try:
            done = self.pools[k].submit(getattr(self.shares[k], method), *args)
        except RuntimeError as e:      # its thread was shut down: a lost share
            raise EngineFailure(f"{self.where(k)} is lost: {e}") from None
        return done.result()

    def where(self, k):
        return f"share {k + 1} (a thread)"

    def spread(self):
        return f"{len(self.shares)} shares in threads of {self.threads} Numba threads"


def thread_engine(train, *, threads=1, **kwargs):
    """The sharded engine over ThreadTransport (ShardedEngine's arguments)."""
    return ShardedEngine(train, transport=ThreadTransport(threads), **kwargs)
