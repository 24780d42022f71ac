"""What several test files ask of engines, each as a list of problems ([]
for none) that the CUDA simulator's report can carry: whether a class of
operations is whole (network.Operations)."""
import inspect

from glocalk_np.network import ForwardOperations, Operations


def operations_problems(cls):
    """What keeps the class ``cls`` from being a whole set of the network's
    operations (Operations, or ForwardOperations for one that is only
    that): abstract methods left, public methods beyond the contract that
    it does not name in ``own``, names in ``own`` it lacks, no bool leader."""
    contract = (Operations if issubclass(cls, Operations) else ForwardOperations)
    public = {name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("_")}
    own = set(cls.own)
    return ([f"abstract: {name}" for name in sorted(cls.__abstractmethods__)]
            + [f"beyond the contract: {name}"
               for name in sorted(public - contract.__abstractmethods__ - own)]
            + [f"own but missing: {name}" for name in sorted(own - public)]
            + ([] if isinstance(getattr(cls, "leader", None), bool) else ["no bool leader"]))
