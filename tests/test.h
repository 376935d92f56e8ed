/* Minimal test framework for ctorch: tests register themselves at load time, the
 * runner (tests/test_main.c) runs them and prints "N passed, N failed, N skipped". */
#ifndef CT_TEST_H
#define CT_TEST_H

#include "ctorch.h"
#include <math.h>
#include <stdio.h>

typedef void (*ct_test_fn)(void);
void ct_test_register(const char *name, ct_test_fn fn, const char *file);
void ct_test_fail(const char *file, int line, const char *fmt, ...);
void ct_test_skip(const char *reason);
/* A new directory from a mkdtemp template ("/tmp/name_XXXXXX") in out: 0, or -1. */
int ct_test_mkdtemp(char *out, size_t n, const char *templ);
/* Removes dir and everything below it. */
void ct_test_rm_rf(const char *dir);

#define TEST(name)                                                                       \
    static void name(void);                                                              \
    __attribute__((constructor)) static void ct_reg_##name(void) {                      \
        ct_test_register(#name, name, __FILE__);                                         \
    }                                                                                    \
    static void name(void)

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) ct_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);              \
    } while (0)
#define CHECK_MSG(cond, ...)                                                             \
    do {                                                                                 \
        if (!(cond)) ct_test_fail(__FILE__, __LINE__, __VA_ARGS__);                      \
    } while (0)
/* Expression returning 0 on success (int API). */
#define CHECK_OK(expr)                                                                   \
    do {                                                                                 \
        if ((expr) != 0)                                                                 \
            ct_test_fail(__FILE__, __LINE__, "%s failed: %s", #expr, ct_last_error());   \
    } while (0)
/* Pointer-returning API call that must succeed. */
#define CHECK_NN(ptr)                                                                    \
    do {                                                                                 \
        if ((ptr) == NULL)                                                               \
            ct_test_fail(__FILE__, __LINE__, "%s returned NULL: %s", #ptr,               \
                         ct_last_error());                                               \
    } while (0)
/* A call that must FAIL (NULL or -1) with an error message containing `needle`. */
#define CHECK_ERR_PTR(expr, needle)                                                      \
    do {                                                                                 \
        ct_clear_error();                                                                \
        ct_tensor *ct__r = (expr);                                                       \
        ct_test_expect_error(__FILE__, __LINE__, ct__r == NULL, #expr, (needle));        \
        ct_free(ct__r);                                                                  \
    } while (0)
#define CHECK_ERR_INT(expr, needle)                                                      \
    do {                                                                                 \
        ct_clear_error();                                                                \
        int ct__r = (expr);                                                              \
        ct_test_expect_error(__FILE__, __LINE__, ct__r != 0, #expr, (needle));           \
    } while (0)
#define SKIP(reason)                                                                     \
    do {                                                                                 \
        ct_test_skip(reason);                                                            \
        return;                                                                          \
    } while (0)

void ct_test_expect_error(const char *file, int line, int failed, const char *expr,
                          const char *needle);

/* Relative error norm ||got - want||_2 / max(||want||_2, 1e-12), computed in double.
 * Fails the test when shapes differ or the error exceeds tol; returns the error. */
double ct_check_close_(const char *file, int line, const ct_tensor *got, const ct_tensor *want,
                       double tol, const char *what);
#define CHECK_CLOSE(got, want, tol, what) ct_check_close_(__FILE__, __LINE__, got, want, tol, what)

/* ---- fixtures: tests/fixtures/NAME.ctf written by tests/fixtures/gen_*.py ---- */
typedef struct ct_fixture ct_fixture;
ct_fixture *ct_fixture_load(const char *name); /* NULL (test fails) when missing */
/* New reference to the named tensor (float32/float64/int64/bool), or NULL + test failure. */
ct_tensor *ct_fixture_get(ct_fixture *fx, const char *key);
int ct_fixture_has(ct_fixture *fx, const char *key);
void ct_fixture_free(ct_fixture *fx);

/* Entries of a directory, not counting dot files; -1 when it cannot be read. */
int ct_test_count_files(const char *dir);

/* ---- float64 gradcheck by central finite differences ----
 * fn builds a tensor from the inputs (all float64, requires_grad set by the caller on
 * those to check). Compares d(sum(out*r))/dx for a fixed random r against central
 * differences with step eps. Fails the test (naming `what`) if any element differs by
 * more than atol + rtol*|numeric|. Returns 0 when all match. */
typedef ct_tensor *(*ct_gradcheck_fn)(ct_tensor *const *inputs, void *ctx);
int ct_gradcheck_(const char *file, int line, ct_gradcheck_fn fn, ct_tensor *const *inputs,
                  int n, void *ctx, const char *what);
#define GRADCHECK(fn, inputs, n, ctx, what) ct_gradcheck_(__FILE__, __LINE__, fn, inputs, n, ctx, what)

/* Helpers. */
ct_tensor *ct_test_randn(const int64_t *shape, int ndim, ct_dtype dt); /* from the global seed */
/* A non-contiguous tensor with t's values (transposed storage of the last two dims). */
ct_tensor *ct_test_noncontig(const ct_tensor *t);

#endif
