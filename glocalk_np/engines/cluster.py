"""The Dask engine: the sharded engine (sharded.py) with one share per
worker of a dask.distributed cluster (pip install 'glocalk-np[dask]').

Each worker holds a sharded.Share as a Dask actor; everything goes through
Dask itself (DaskTransport: actor method calls, the ring matrices
scattered once), no transport of our own. The command's client comes from
connect, which checks its --scheduler or --local-workers first, so that a
misconfiguration ends it in one line.
"""
import asyncio
import contextlib
import logging
import os
import socket

from ..safeio import shorten
from .base import EngineFailure
from .sharded import Share, ShardedEngine, Transport

# BLAS and OpenMP thread counts a worker process's NumPy reads at start: the
# nanny sets them to 1 unless its environment says otherwise
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# distributed's log level while connect's block runs: above CRITICAL, so none
# (a lost scheduler is logged as tracebacks); a failure is the command's line
SILENT = logging.CRITICAL + 1
# Address schemes that need Dask's TLS settings
TLS_SCHEMES = ("tls", "wss")


def usable_cpus():
    """The CPUs this process may run on: its affinity where the system keeps
    one (a container or taskset may allow fewer than os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def local_cluster(workers, **kwargs):
    """A LocalCluster of ``workers`` processes on this machine, the cores
    shared among them: each gets cores // workers Numba threads and as many
    BLAS threads (the hidden layers' GEMMs; the nanny's default is 1, which
    made one worker 1.2-1.4x slower than one process at ML-1M), unless the
    environment already sets them. ``kwargs`` go to LocalCluster."""
    import dask
    from distributed import LocalCluster
    threads = max(1, usable_cpus() // workers)
    env = {k: os.environ.get(k, str(threads)) for k in BLAS_THREAD_VARIABLES}
    with environment_kept(), dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v
                                              for k, v in env.items()}):
        with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                          memory_limit=0, dashboard_address=":0", **kwargs) as cluster:
            yield cluster


@contextlib.contextmanager
def environment_kept():
    """This process's environment as it was, whatever runs inside: Dask's
    nanny writes its workers' settings into it (BLAS and OpenMP threads 1,
    MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED), which every later subprocess
    would inherit."""
    before = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


@contextlib.contextmanager
def connect(scheduler=None, local_workers=None):
    """The command's dask.distributed Client (its --scheduler or
    --local-workers), the current one while the block runs: on the
    scheduler at the address ``scheduler``, or on local_cluster's
    ``local_workers`` processes, one per usable CPU at most. All is checked
    before a process starts: ValueError for a value that cannot work,
    EngineFailure where no Dask scheduler answers. distributed logs nothing
    while the block runs, so that a failure is the command's one line."""
    cpus = usable_cpus()
    if local_workers is not None and not 1 <= local_workers <= cpus:
        raise ValueError(f"--local-workers {local_workers}: give 1 to {cpus}, one worker "
                         "process per CPU this process may use at most")
    try:
        from distributed import Client
        from distributed.utils import silence_logging_cmgr
    except ImportError as e:
        raise ValueError(f"--device dask needs dask.distributed ({e}): "
                         "pip install 'glocalk-np[dask]'") from None
    with silence_logging_cmgr(SILENT):
        if scheduler is None:
            with local_cluster(local_workers, silence_logs=SILENT) as cluster, \
                    Client(cluster, direct_to_workers=True) as client:
                yield client
            return
        address, timeout = scheduler_address(scheduler), connect_timeout()
        greet(address, timeout)
        try:
            client = Client(address, timeout=timeout, direct_to_workers=True)
        except (OSError, TimeoutError) as e:       # it went away since it answered
            raise EngineFailure(f"cannot reach the Dask scheduler {address}: {e}") from None
        with client:
            yield client


def scheduler_address(text):
    """``text`` as the address of a Dask scheduler, SCHEME://HOST:PORT
    (tcp:// where it names no scheme), checked; ValueError saying why not."""
    from distributed.comm import parse_address, parse_host_port, registry
    scheme, loc = parse_address(text)
    given = f"--scheduler {shorten(repr(text))}"
    if scheme == "inproc":
        raise ValueError(f"{given}: an inproc:// address names a scheduler in the same "
                         "Python process; give a `dask scheduler`'s, tcp://HOST:8786")
    try:
        registry.get_backend(scheme)
    except ValueError:
        known = sorted(set(registry.backends) - {"inproc"})
        raise ValueError(f"{given}: unknown scheme {scheme}:// (Dask's are "
                         f"{', '.join(known)})") from None
    try:
        host, port = parse_host_port(loc)
    except ValueError:
        host, port = None, None
    if not host or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{given} is not an address SCHEME://HOST:PORT with a port in "
                         "[1, 65535] (tcp://HOST:8786)")
    if scheme in TLS_SCHEMES and _connection_args()["ssl_context"] is None:
        raise ValueError(f"{given}: {scheme}:// needs Dask's TLS settings "
                         "(distributed.comm.tls.ca-file, client.cert and client.key in its "
                         "configuration)")
    return f"{scheme}://{loc}"


def connect_timeout():
    """Seconds to wait for the scheduler's answer: Dask's setting
    distributed.comm.timeouts.connect (DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)."""
    import dask
    from dask.utils import parse_timedelta
    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "seconds")


def _connection_args():
    """The client's TLS arguments of Dask's configuration (distributed.Client's own)."""
    from distributed.security import Security
    return Security().get_connection_args("client")


def greet(address, timeout):
    """Ask the server at ``address`` who it is, within about ``timeout``
    seconds for the connection and as long again for the answer;
    EngineFailure unless a Dask scheduler answers. distributed.Client's own
    greeting has no deadline (a server that reads and waits holds it for
    ever), and it reads whatever answers as Dask's messages: an HTTP reply's
    first 8 bytes as a length of exbibytes, whose allocation fails with a
    MemoryError that is no shortage of memory."""
    from distributed.comm import connect as open_comm, parse_address, parse_host_port
    from distributed.comm.core import CommClosedError
    host = parse_host_port(parse_address(address)[1])[0]
    try:
        socket.getaddrinfo(host, None)
    except OSError as e:
        raise EngineFailure(f"the host of the Dask scheduler {address} is not known: "
                            f"{e.strerror or e}") from None

    async def identity():
        comm = await asyncio.wait_for(open_comm(address, timeout=timeout,
                                                **_connection_args()), timeout + 1)
        try:
            await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), timeout)
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()
    try:
        answer = asyncio.run(identity())
    except CommClosedError as e:               # before OSError: CommClosedError is one
        why = f"it closed the connection ({e.__cause__ or e})"
    except asyncio.TimeoutError:               # wait_for's: connected, then silence
        why = f"it did not answer Dask's greeting in {timeout:g} s"
    except OSError:                            # open_comm's retries ran out: nothing there
        raise EngineFailure(f"no Dask scheduler answers at {address}: nothing accepted a "
                            f"connection in {timeout:g} s (is `dask scheduler` running "
                            "there?)") from None
    except MemoryError:
        why = "its answer is not in Dask's protocol (an HTTP server's?)"
    except Exception as e:                     # noqa: BLE001 - whatever else it said
        why = f"its answer is not a Dask message ({type(e).__name__}: {e})"
    else:
        kind = answer.get("type") if isinstance(answer, dict) else None
        if kind == "Scheduler":
            return
        if kind:
            raise EngineFailure(f"{address} is a Dask {kind}, not the scheduler: give the "
                                "address the workers were started with")
        why = f"it answered {shorten(repr(answer))}"
    raise EngineFailure(f"{address} is not a Dask scheduler: {why}; another service on that "
                        "port? (a scheduler listens on 8786 by default, its dashboard on 8787)")




class DaskTransport(Transport):
    """The shares as Dask actors on the workers of ``client``, each share
    with ``threads`` Numba threads (default: its worker's thread count). A
    client made with direct_to_workers=True calls the actors directly;
    otherwise Dask relays each call, and every byte, through the scheduler."""

    def __init__(self, client, threads=None):
        self._client, self._threads_asked = client, threads

    def places(self):
        self._info = self._client.scheduler_info()["workers"]   # open reads their threads
        workers = sorted(self._info)
        if not workers:
            raise ValueError("the Dask cluster has no workers")
        return workers

    def open(self, workers, shares):
        client, self.workers = self._client, workers
        self._threads = [self._threads_asked or self._info[w].get("nthreads") for w in workers]
        futures = []
        for k, (spec, worker) in enumerate(zip(shares, workers)):
            X = self._result(k, client.scatter, spec["ring_matrix"], workers=[worker],
                             direct=True)                   # data, not a task's graph
            futures.append(client.submit(
                Share, **{**spec, "ring_matrix": X}, threads=self._threads[k], actor=True,
                workers=[worker], pure=False))
        self.actors = [self._result(k, f.result) for k, f in enumerate(futures)]

    def _result(self, k, call, *args, **kwargs):
        """call(*args, **kwargs) for share k (a method name of its actor, or
        a callable), or EngineFailure naming its worker, or the scheduler
        where the client lost it: a lost worker fails the look-up of an
        actor's method, the call or its result."""
        try:
            if isinstance(call, str):
                call = getattr(self.actors[k], call)
            return call(*args, **kwargs)
        except Exception as e:                  # noqa: BLE001 - any failure of the cluster
            if self._client.status != "running":   # every actor went with the scheduler
                raise EngineFailure(f"lost the Dask scheduler {self._client.scheduler.address}"
                                    ": the connection to it closed") from None
            raise EngineFailure(f"the Dask worker {self.workers[k]} (share {k + 1} of "
                                f"{len(self.workers)}) failed or was lost: "
                                f"{type(e).__name__}: {e}") from None

    def each(self, method, args):
        calls = [self._result(k, method, *a) for k, a in enumerate(args)]
        return [self._result(k, call.result) for k, call in enumerate(calls)]

    def call(self, k, method, *args):
        return self._result(k, self._result(k, method, *args).result)

    def where(self, k):
        return f"the Dask worker {self.workers[k]} (share {k + 1})"

    def spread(self):
        n = len(self.workers)
        return (f"{n} Dask worker{'s' if n > 1 else ''} of "
                f"{', '.join(map(str, self._threads))} Numba threads")


class DaskEngine(ShardedEngine):
    """The sharded engine over a dask.distributed ``client`` (DaskTransport):
    by default one share per worker, each with its worker's Numba threads
    (or ``threads``); the other arguments are ShardedEngine's."""

    def __init__(self, train, *, client, threads=None, **kwargs):
        super().__init__(train, transport=DaskTransport(client, threads), **kwargs)

    @property
    def workers(self):
        """The address of each share's worker."""
        return self.transport.workers

    @property
    def actors(self):
        """Each share's Share actor."""
        return self.transport.actors
