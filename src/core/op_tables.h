/* The elementwise op families, each written once as a table (an X-macro): one row per op
 * with its name, its autograd node, its dtype rule, the scalar formulas and the sample
 * arguments the tests use. Everything else is generated from these rows:
 *   - the enums ct_unop / ct_binop / ct_redop and their counts (src/core/backend.h),
 *   - the op layer's checks, node names and public wrappers (src/ops/pointwise.c),
 *   - the CPU kernels' loops, one branch-free loop per op (src/backends/cpu/cpu_elementwise.c),
 *   - the CUDA kernels' cases (src/backends/cuda/cuda_elementwise.cu),
 *   - the test specs: fixtures, gradcheck and every backend against the CPU (tests/).
 * This header is plain C99 without ctorch types, compiled by the C compiler and by nvcc
 * (and by g++ for the CUDA emulator): the formulas are the same text on every backend.
 * Adding an op: docs/architecture.md, "How to add an elementwise op". */
#ifndef CT_OP_TABLES_H
#define CT_OP_TABLES_H

/* ------------------------------------------------------------- formula helpers
 * The formulas are statements over a type T (float, double, or int64 for rows whose dtype
 * rule is ANY). Math functions pick the float or double version by T's size, as the
 * kernels always did (expf for float32, exp for float64). */
#define CT_IS_FLOAT(T) ((T)0.5 != (T)0)
#define CT_M1(T, F, v) (sizeof(T) == 4 ? (T)F##f((float)(v)) : (T)F((double)(v)))
#define CT_M2(T, F, v, w)                                                                  \
    (sizeof(T) == 4 ? (T)F##f((float)(v), (float)(w)) : (T)F((double)(v), (double)(w)))
#define CT_ABS(T, v) (CT_IS_FLOAT(T) ? CT_M1(T, fabs, v) : ((v) < 0 ? -(v) : (v)))
#define CT_SIGN(T, v) ((T)(((v) > 0) - ((v) < 0)))
#define CT_ISNAN(v) ((v) != (v))
/* std::max / std::min as PyTorch's kernels use them (NaN in the first argument stays). */
#define CT_MAXF(a, b) ((a) < (b) ? (b) : (a))
#define CT_MINF(a, b) ((b) < (a) ? (b) : (a))

#define CT_SQRT_2_OVER_PI 0.7978845608028654
#define CT_INV_SQRT_2 0.7071067811865476
#define CT_INV_SQRT_2PI 0.3989422804014327

/* ------------------------------------------------------------------ unary ops
 * OP(ID, name, node, dtypes, saves, api, forward, derivative, test p1, test p2, domain)
 *   ID       enum value CT_UN_<ID>
 *   name     the op's name in messages and fixtures (tests/fixtures/unary.ctf "<name>.<k>")
 *   node     the autograd node's name (PyTorch's grad_fn names)
 *   dtypes   ANY: floating and int64 (the int64 kernels instantiate the same formula)
 *            FLOAT: floating only (the op layer refuses other dtypes)
 *   saves    what the derivative reads: NONE, IN (the input x), OUT (the output y) or BOTH
 *   api      A0: the public ct_<name>(x) is generated; HAND: written in src/ops/pointwise.c
 *   forward  statements setting r from x and the scalars p1, p2 (all of type T)
 *   derivative  statements setting d = dy/dx from x, y, p1, p2 (gx = gy * d)
 *   test p1, p2, domain  the arguments and input domain (ANY or POS) the tests use; the
 *            fixture generator (tests/fixtures/gen_pointwise.py) uses the same. */
#define CT_UNARY_OPS(OP)                                                                    \
    OP(NEG, neg, "NegBackward", ANY, NONE, A0,                                              \
      r = -x, d = (T)-1, 0, 0, ANY)                                                        \
    OP(EXP, exp, "ExpBackward", FLOAT, OUT, A0,                                               \
      r = CT_M1(T, exp, x), d = y, 0, 0, ANY)                                              \
    OP(LOG, log, "LogBackward", FLOAT, IN, A0,                                               \
      r = CT_M1(T, log, x), d = (T)1 / x, 0, 0, POS)                                       \
    OP(SQRT, sqrt, "SqrtBackward", FLOAT, OUT, A0,                                            \
      r = CT_M1(T, sqrt, x), d = (T)0.5 / y, 0, 0, POS)                                    \
    OP(ABS, abs, "AbsBackward", ANY, IN, A0,                                                 \
      r = CT_ABS(T, x), d = CT_SIGN(T, x), 0, 0, ANY)                                      \
    OP(SIGN, sign, "SignBackward", ANY, NONE, A0,                                           \
      r = CT_SIGN(T, x), d = (T)0, 0, 0, ANY)                                              \
    OP(POW, pow, "PowBackward", FLOAT, IN, HAND,                                             \
      r = CT_M2(T, pow, x, p1), d = p1 == 0 ? (T)0 : p1 * CT_M2(T, pow, x, p1 - 1), 2.5, 0, \
      POS)                                                                                 \
    OP(CLAMP, clamp, "ClampBackward", ANY, IN, HAND,                                         \
      r = x < p1 ? p1 : (x > p2 ? p2 : x); if (CT_ISNAN(x)) r = x,                         \
      d = (x >= p1 && x <= p2) ? (T)1 : (T)0, -0.5, 0.7, ANY)                              \
    OP(ADD_SCALAR, add_scalar, "AddBackward", ANY, NONE, HAND,                              \
      r = x + p1, d = (T)1, 1.5, 0, ANY)                                                   \
    OP(MUL_SCALAR, mul_scalar, "MulBackward", ANY, NONE, HAND,                              \
      r = x * p1, d = p1, -2, 0, ANY)                                                      \
    OP(RELU, relu, "ReluBackward", ANY, IN, A0,                                              \
      r = x > 0 ? x : (T)0; if (CT_ISNAN(x)) r = x, d = x > 0 ? (T)1 : (T)0, 0, 0, ANY)    \
    OP(LEAKY_RELU, leaky_relu, "LeakyReluBackward", FLOAT, IN, HAND,                         \
      r = x > 0 ? x : x * p1, d = x > 0 ? (T)1 : p1, 0.1, 0, ANY)                          \
    OP(GELU, gelu, "GeluBackward", FLOAT, IN, HAND,                                          \
      r = (T)0.5 * x * ((T)1 + CT_M1(T, erf, x * (T)CT_INV_SQRT_2)),                       \
      T cdf = (T)0.5 * ((T)1 + (T)erf((double)(x * (T)CT_INV_SQRT_2)));                    \
      T pdf = (T)CT_INV_SQRT_2PI * CT_M1(T, exp, (T)-0.5 * x * x); d = cdf + x * pdf,      \
      0, 0, ANY)                                                                           \
    OP(GELU_TANH, gelu_tanh, "GeluBackward", FLOAT, IN, HAND,                                \
      r = (T)0.5 * x *                                                                     \
          ((T)1 + CT_M1(T, tanh, (T)CT_SQRT_2_OVER_PI * (x + (T)0.044715 * x * x * x))),   \
      T inner = (T)CT_SQRT_2_OVER_PI * (x + (T)0.044715 * x * x * x);                      \
      T t = CT_M1(T, tanh, inner);                                                         \
      T dinner = (T)CT_SQRT_2_OVER_PI * ((T)1 + (T)3 * (T)0.044715 * x * x);               \
      d = (T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * dinner, 0, 0, ANY)          \
    OP(SIGMOID, sigmoid, "SigmoidBackward", FLOAT, OUT, A0,                                   \
      r = (T)1 / ((T)1 + CT_M1(T, exp, -x)), d = y * ((T)1 - y), 0, 0, ANY)                \
    OP(TANH, tanh, "TanhBackward", FLOAT, OUT, A0,                                            \
      r = CT_M1(T, tanh, x), d = (T)1 - y * y, 0, 0, ANY)                                   \
    OP(HARDSWISH, hardswish, "HardswishBackward", FLOAT, IN, A0,                            \
      r = x * CT_MINF(CT_MAXF(x + (T)3, (T)0), (T)6) / (T)6,                                \
      d = x < (T)-3 ? (T)0 : (x <= (T)3 ? x / (T)3 + (T)0.5 : (T)1), 0, 0, ANY)             \
    OP(SILU, silu, "SiluBackward", FLOAT, IN, A0,                                           \
      r = x / ((T)1 + CT_M1(T, exp, -x)),                                                   \
      T s = (T)1 / ((T)1 + CT_M1(T, exp, -x)); d = s * ((T)1 + x * ((T)1 - s)), 0, 0, ANY) \
    OP(HARDTANH, hardtanh, "HardtanhBackward", FLOAT, IN, HAND,                             \
      r = x < p1 ? p1 : (x > p2 ? p2 : x); if (CT_ISNAN(x)) r = x,                         \
      d = (x > p1 && x < p2) ? (T)1 : (T)0, -0.5, 0.7, ANY)

/* ----------------------------------------------------------------- binary ops
 * OP(ID, name, node, result, forward) with broadcasting (the op layer expands both
 * operands, of one dtype); forward sets r from x (first operand), y (second) and al (the
 * alpha of add/sub), for every operand dtype the row takes:
 *   result  SAME: r has the operands' dtype (float32, float64 or int64: integer division
 *             by zero gives 0, not a trap); the public ct_<name>(a, b) is differentiable.
 *           BOOL: r is a bool (0 or 1) computed from operands of any of float32,
 *             float64, int64 and bool (uint8 0/1): comparisons with IEEE NaN semantics
 *             (NaN != NaN is true, every other comparison with NaN false) and logical
 *             ops (non-zero, NaN included, is true). No gradient: as in PyTorch the
 *             output does not require grad (the op records no autograd node: node is
 *             NULL).
 * The public ct_<name>(a, b) of every row is generated (src/ops/pointwise.c). The
 * backward formulas are composed from public ops there, one case per row (a missing case
 * fails the build: -Wswitch; the BOOL rows' case is an error that is never reached). */
#define CT_BINARY_OPS(OP)                                                                   \
    OP(ADD, add, "AddBackward", SAME, r = x + al * y)                                       \
    OP(SUB, sub, "SubBackward", SAME, r = x - al * y)                                       \
    OP(MUL, mul, "MulBackward", SAME, r = x * y)                                            \
    OP(DIV, div, "DivBackward", SAME, r = CT_IS_FLOAT(T) || y != 0 ? x / y : (T)0)          \
    OP(EQ, eq, NULL, BOOL, r = x == y)                                                      \
    OP(NE, ne, NULL, BOOL, r = x != y)                                                      \
    OP(LT, lt, NULL, BOOL, r = x < y)                                                       \
    OP(LE, le, NULL, BOOL, r = x <= y)                                                      \
    OP(GT, gt, NULL, BOOL, r = x > y)                                                       \
    OP(GE, ge, NULL, BOOL, r = x >= y)                                                      \
    OP(LOGICAL_AND, logical_and, NULL, BOOL, r = x != 0 && y != 0)                          \
    OP(LOGICAL_OR, logical_or, NULL, BOOL, r = x != 0 || y != 0)

/* -------------------------------------------------------------- reductions
 * OP(ID, name, node): sum and mean over a set of dims, max over one dim with indices, any
 * and all over a set of dims into bool (non-zero, NaN included, is true; the kernels
 * count the non-zero elements for any, the zeros for all: any of nothing is false, all of
 * nothing true; no gradient). */
#define CT_REDUCE_OPS(OP)                                                                   \
    OP(SUM, sum, "SumBackward")                                                             \
    OP(MEAN, mean, "MeanBackward")                                                          \
    OP(MAX, max, "MaxBackward")                                                             \
    OP(ANY, any, NULL)                                                                      \
    OP(ALL, all, NULL)

/* ------------------------------------------------------------- the enums */
#define CT__ENUM_UN(ID, ...) CT_UN_##ID,
#define CT__ENUM_BIN(ID, ...) CT_BIN_##ID,
#define CT__ENUM_RED(ID, ...) CT_RED_##ID,
typedef enum { CT_UNARY_OPS(CT__ENUM_UN) CT_UN_COUNT } ct_unop;
typedef enum { CT_BINARY_OPS(CT__ENUM_BIN) CT_BIN_COUNT } ct_binop;
typedef enum { CT_REDUCE_OPS(CT__ENUM_RED) CT_RED_COUNT } ct_redop;

/* ------------------------------------------------- row selectors for generators
 * CT_IF_<dtypes>_INT(...) keeps its arguments for rows whose dtype rule allows int64;
 * CT_IF_A0(...) for rows whose public wrapper is generated. */
#define CT_IF_ANY_INT(...) __VA_ARGS__
#define CT_IF_FLOAT_INT(...)
#define CT_FLOAT_ONLY_ANY 0
#define CT_FLOAT_ONLY_FLOAT 1
#define CT_IF_A0(...) __VA_ARGS__
#define CT_IF_HAND(...)
#define CT_SAVES_NONE 0
#define CT_SAVES_IN 1
#define CT_SAVES_OUT 2
#define CT_SAVES_BOTH 3
#define CT_DOMAIN_ANY 0
#define CT_DOMAIN_POS 1
/* CT_IF_SAME_ROW_<result>(...) keeps its arguments for binary rows whose result rule is
 * SAME, CT_IF_BOOL_ROW_<result>(...) for those whose rule is BOOL; CT_RESULT_<result> is
 * the rule as a number. */
#define CT_IF_SAME_ROW_SAME(...) __VA_ARGS__
#define CT_IF_SAME_ROW_BOOL(...)
#define CT_IF_BOOL_ROW_SAME(...)
#define CT_IF_BOOL_ROW_BOOL(...) __VA_ARGS__
#define CT_RESULT_SAME 0
#define CT_RESULT_BOOL 1

/* Whether binary row `op` gives a bool result (its result rule is BOOL). */
#define CT__BIN_RESULT(ID, name, node, result, ...) CT_RESULT_##result,
static inline int ct_binop_result_bool(int op) {
    static const unsigned char k_result[CT_BIN_COUNT] = {CT_BINARY_OPS(CT__BIN_RESULT)};
    return op >= 0 && op < CT_BIN_COUNT && k_result[op] == CT_RESULT_BOOL;
}
#undef CT__BIN_RESULT

#endif
