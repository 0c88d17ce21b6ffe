/* Test plugin that reports a future ABI version: the host must refuse it before calling init. */
#include <stddef.h>

#include "tamiyo/esper_policy_v1.h"

uint32_t esper_policy_abi_version(void) { return ESPER_POLICY_ABI_VERSION + 1; }
void* esper_policy_init(const char* config, char* name, uint32_t cap) {
    (void)config;
    (void)name;
    (void)cap;
    return NULL;
}
int32_t esper_policy_decide(void* st, const esper_policy_input_v1* in,
                            esper_policy_decision_v1* out, uint32_t cap) {
    (void)st;
    (void)in;
    (void)out;
    (void)cap;
    return 0;
}
void esper_policy_destroy(void* st) { (void)st; }
