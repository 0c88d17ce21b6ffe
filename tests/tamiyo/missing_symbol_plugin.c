/* Test plugin with the right ABI version but no esper_policy_decide: the host must refuse it. */
#include <stdlib.h>

#include "tamiyo/esper_policy_v1.h"

uint32_t esper_policy_abi_version(void) { return ESPER_POLICY_ABI_VERSION; }
void* esper_policy_init(const char* config, char* name, uint32_t cap) {
    (void)config;
    (void)name;
    (void)cap;
    return malloc(1);
}
void esper_policy_destroy(void* st) { free(st); }
