"""Flush-to-zero for the Numba kernels, as TensorFlow's CPU kernels do.

Once the sigmoids saturate, products of small gradients and weights fall
below float32's smallest normal number; x86 handles such subnormal operands
and results in microcode, which made the sparse products 10-60x slower in
the middle of a fit. Each kernel sets FTZ and DAZ in the calling thread's
MXCSR for its own work and restores the old value, so nothing outside the
kernels (NumPy, the user's code) sees the change. On other processors both
calls do nothing.
"""
import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

X86 = platform.machine().lower() in ("x86_64", "amd64")
FTZ_DAZ = 0x8040


def _mxcsr(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.sse.{name}")
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def flush_denormals(typingctx):
    """Turn on FTZ and DAZ in this thread; returns the previous MXCSR."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        if not X86:
            return ir.Constant(i32, 0)
        slot = cgutils.alloca_once(builder, i32)
        _mxcsr(builder, "stmxcsr", slot)
        old = builder.load(slot)
        builder.store(builder.or_(old, ir.Constant(i32, FTZ_DAZ)), slot)
        _mxcsr(builder, "ldmxcsr", slot)
        return old
    return types.uint32(), codegen


@intrinsic
def restore_fpenv(typingctx, old):
    """Put back the MXCSR that flush_denormals returned."""
    def codegen(context, builder, signature, args):
        if X86:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr(builder, "ldmxcsr", slot)
        return context.get_dummy_value()
    return types.void(types.uint32), codegen
