/* Test plugin whose load-time constructor leaves a mark: it appends its process id to the file
 * named by ESPER_EVIL_MARKER. With EVIL_COMPLETE it exports the whole ABI but reports version 2
 * (it passes the file check, then must be refused in a throw-away child); without, it lacks
 * esper_policy_decide (refused from its ELF symbols, before anything runs). With EVIL_SLOW_MS the
 * constructor first sleeps that long: a probe child slower than the broker's agent expiry. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tamiyo/esper_policy_v1.h"

__attribute__((constructor)) static void evil_on_load(void) {
#ifdef EVIL_SLOW_MS
    struct timespec slow = {EVIL_SLOW_MS / 1000, (EVIL_SLOW_MS % 1000) * 1000000L};
    nanosleep(&slow, NULL);
#endif
    const char* marker = getenv("ESPER_EVIL_MARKER");
    if (marker == NULL) return;
    FILE* f = fopen(marker, "a");
    if (f == NULL) return;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
}

uint32_t esper_policy_abi_version(void) { return 2u; }
void* esper_policy_init(const char* config, char* name, uint32_t cap) {
    (void)config;
    (void)name;
    (void)cap;
    return malloc(1);
}
void esper_policy_destroy(void* st) { free(st); }
#ifdef EVIL_COMPLETE
int32_t esper_policy_decide(void* st, const esper_policy_input_v1* in,
                            esper_policy_decision_v1* out, uint32_t cap) {
    (void)st;
    (void)in;
    (void)out;
    (void)cap;
    return 0;
}
#endif
