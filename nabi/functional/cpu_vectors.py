"""Short vectors for the compiled CPU kernels: eight numbers of an array held as one value (a register).

numba compiles a loop over array elements into vector instructions when it can prove that doing so is safe, and
keeps every running sum in memory between the statements of a loop nest. A register-blocked kernel (a block of
sums kept in registers while a whole reduction runs through them: ``cpu_kernels``' direct convolution) needs the
vectors by name, as C code names them with intrinsics. These functions give numba's loops that: each compiles to
one LLVM vector operation on ``LANES`` numbers of the array's dtype, which the CPU's backend maps to its own
registers (AVX2: one ymm register of float32, two of float64; a narrower CPU splits it, a wider one fills
half of one), so the kernels are portable and their results do not depend on the CPU.

    v = load(a, i)           v[l] = a[i + l]                   (a 1-D C-contiguous array; no bounds check)
    store(a, i, v)           a[i + l] = v[l]
    zeros(a)                 v[l] = 0                          (of a's dtype)
    fma(acc, v, s)           acc[l] + v[l] · s                 (s a scalar; one fused multiply-add where the CPU has it)
    fma2(acc, u, v)          acc[l] + u[l] · v[l]
    add(v, s)                v[l] + s
    relu(v)                  0 where v[l] ≤ 0, else v[l]       (NaN kept, as ``max(x, 0)`` propagates it)
    total(v)                 Σ_l v[l], added pairwise in a fixed order (halves, then quarters, then the last two)

Bounds are the caller's: a load or store reads or writes ``LANES`` elements from index i on.
"""
from __future__ import annotations

LANES = 8

try:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, register_model
except Exception:  # pragma: no cover - numba is optional
    intrinsic = None

if intrinsic is not None:
    class Vector(types.Type):
        """``LANES`` numbers of one dtype, held as an LLVM vector value."""

        def __init__(self, dtype):
            self.dtype = dtype
            super().__init__(name=f"vector{LANES}({dtype})")

    @register_model(Vector)
    class _VectorModel(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), LANES))

    def _vector_type(context, dtype):
        return ir.VectorType(context.get_value_type(dtype), LANES)

    def _address(context, builder, aryty, ary, i):
        data = context.make_array(aryty)(context, builder, ary).data
        ptr = builder.gep(data, [i], source_etype=context.get_value_type(aryty.dtype))
        return builder.bitcast(ptr, _vector_type(context, aryty.dtype).as_pointer())

    def _splat(context, builder, value, fromty, dtype):
        vt = _vector_type(context, dtype)
        s = context.cast(builder, value, fromty, dtype)
        v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))

    def _fmuladd(builder, a, b, c):
        vt = a.type
        name = f"llvm.fmuladd.v{LANES}{vt.element.intrinsic_name}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)
        return builder.call(fn, [a, b, c])

    def _check_array(a):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                and isinstance(a.dtype, types.Float)):
            raise TypeError(f"cpu_vectors: expected a 1-D C-contiguous float array, got {a}")

    @intrinsic
    def load(typingctx, a, i):
        _check_array(a)

        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[0], args[0], args[1])
            return builder.load(ptr, align=sig.args[0].dtype.bitwidth // 8)
        return Vector(a.dtype)(a, i), codegen

    @intrinsic
    def store(typingctx, a, i, v):
        _check_array(a)

        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[0], args[0], args[1])
            builder.store(args[2], ptr, align=sig.args[0].dtype.bitwidth // 8)
            return context.get_dummy_value()
        return types.none(a, i, v), codegen

    @intrinsic
    def zeros(typingctx, a):
        def codegen(context, builder, sig, args):
            return ir.Constant(_vector_type(context, sig.args[0].dtype), None)
        return Vector(a.dtype)(a), codegen

    @intrinsic
    def fma(typingctx, acc, v, s):
        def codegen(context, builder, sig, args):
            return _fmuladd(builder, args[1], _splat(context, builder, args[2], sig.args[2], sig.args[0].dtype),
                            args[0])
        return acc(acc, v, s), codegen

    @intrinsic
    def fma2(typingctx, acc, u, v):
        def codegen(context, builder, sig, args):
            return _fmuladd(builder, args[1], args[2], args[0])
        return acc(acc, u, v), codegen

    @intrinsic
    def add(typingctx, v, s):
        def codegen(context, builder, sig, args):
            return builder.fadd(args[0], _splat(context, builder, args[1], sig.args[1], sig.args[0].dtype))
        return v(v, s), codegen

    @intrinsic
    def relu(typingctx, v):
        def codegen(context, builder, sig, args):
            zero = ir.Constant(args[0].type, None)
            return builder.select(builder.fcmp_ordered("<=", args[0], zero), zero, args[0])
        return v(v), codegen

    @intrinsic
    def total(typingctx, v):
        def codegen(context, builder, sig, args):
            s, width = args[0], LANES
            while width > 1:                # s[:width/2] + s[width/2:width]: log2(LANES) vector additions
                width //= 2
                lo = builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width))))
                hi = builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                              list(range(width, 2 * width))))
                s = builder.fadd(lo, hi)
            return builder.extract_element(s, ir.Constant(ir.IntType(32), 0))
        return v.dtype(v), codegen
