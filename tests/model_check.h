/* Checks shared by the tests of models ported from torchvision. */
#ifndef CT_TEST_MODEL_CHECK_H
#define CT_TEST_MODEL_CHECK_H

/* Compares ct_model_create(model, 1000)'s state_dict with a listing written by a fixture
 * generator (tests/fixtures/<listing>): "model NAME PARAMS ENTRIES" lines, then one
 * "name dtype shape" line per entry in order. Each difference fails the running test,
 * naming the generator to run when the listing is missing. Returns the number of models
 * listed. */
int check_state_dict_listing(const char *listing, const char *generator);

#endif
