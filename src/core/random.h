/* Counter-based RNG shared by rand/randn, dropout, initialisation and data shuffling. */
#ifndef CT_RANDOM_H
#define CT_RANDOM_H
#include <stdint.h>
#include "error.h"

/* Reserves n numbers from the global stream; returns the first counter. */
uint64_t ct_rng_reserve(uint64_t n);
uint64_t ct_rng_bits(uint64_t seed, uint64_t counter);
double ct_rng_uniform(uint64_t seed, uint64_t counter); /* [0, 1) */
double ct_rng_normal(uint64_t seed, uint64_t counter);  /* N(0, 1) */
#endif
