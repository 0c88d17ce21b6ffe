/* Example Tamiyo policy plugin over the esper_policy_v1 C ABI (tamiyo/esper_policy_v1.h).
 * Policy: on a loss plateau germinate one dormant seed per layer that has no active seed (the
 * lowest health first); approve TRAINING gates after `training_steps` when gradient health >= 0.7;
 * at EVALUATING keep seeds that help (contribution > 0) and cull the others; fossilize after
 * fine-tuning. Config string (optional): "training_steps=N". Load with `esper policy load
 * build/lib/libesper_example_policy.so`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tamiyo/esper_policy_v1.h"

#define EXPORT __attribute__((visibility("default")))

typedef struct {
    uint32_t training_steps;
    uint32_t calls;
} example_state;

static void add(esper_policy_decision_v1* out, uint32_t capacity, int32_t* n, uint32_t kind,
                const esper_policy_seed_v1* s, const char* reason) {
    if ((uint32_t)*n >= capacity) return;
    esper_policy_decision_v1* d = &out[*n];
    memset(d, 0, sizeof(*d));
    d->kind = kind;
    d->layer = s->layer;
    d->seed = s->seed;
    d->blueprint_kind = 0; /* residual_mlp */
    snprintf(d->strategy, sizeof(d->strategy), "%s", "linear");
    snprintf(d->reason, sizeof(d->reason), "example_plugin: %s", reason);
    ++*n;
}

EXPORT uint32_t esper_policy_abi_version(void) { return ESPER_POLICY_ABI_VERSION; }

EXPORT void* esper_policy_init(const char* config, char* name, uint32_t name_capacity) {
    example_state* st = (example_state*)calloc(1, sizeof(example_state));
    if (st == NULL) return NULL;
    st->training_steps = 200;
    if (config != NULL) {
        unsigned v = 0;
        if (sscanf(config, "training_steps=%u", &v) != 1) {
            free(st);
            return NULL; /* the host refuses the plugin */
        }
        st->training_steps = v;
    }
    if (name != NULL && name_capacity > 0) snprintf(name, name_capacity, "%s", "example_plugin");
    return st;
}

EXPORT int32_t esper_policy_decide(void* state, const esper_policy_input_v1* in,
                                   esper_policy_decision_v1* out, uint32_t capacity) {
    example_state* st = (example_state*)state;
    int32_t n = 0;
    uint32_t i = 0;
    ++st->calls;
    for (i = 0; i < in->num_seeds; ++i) {
        const esper_policy_seed_v1* s = &in->seeds[i];
        if (s->stage == 2 && s->steps_in_stage >= st->training_steps &&
            !isnan(s->gradient_health) && s->gradient_health >= 0.7f)
            add(out, capacity, &n, ESPER_POLICY_APPROVE, s, "gradient health >= 0.7");
        else if (s->stage == 5 && !isnan(s->contribution))
            add(out, capacity, &n,
                s->contribution > 0.0f ? ESPER_POLICY_APPROVE : ESPER_POLICY_CULL, s,
                s->contribution > 0.0f ? "seed helps" : "seed does not help");
        else if (s->stage == 6 && s->steps_in_stage >= 200)
            add(out, capacity, &n, ESPER_POLICY_FOSSILIZE, s, "fine-tuned");
    }
    if (in->run->plateau) {
        /* Seeds arrive grouped by layer: pick per layer the weakest dormant seed, if the layer
         * has no active seed. */
        uint32_t start = 0;
        while (start < in->num_seeds) {
            uint32_t end = start, best = in->num_seeds, active = 0;
            float best_health = INFINITY;
            while (end < in->num_seeds && in->seeds[end].layer == in->seeds[start].layer) {
                const esper_policy_seed_v1* s = &in->seeds[end];
                if (s->stage >= 1 && s->stage <= 6) ++active;
                if (s->stage == 0) {
                    float h = isnan(s->health) ? INFINITY : s->health;
                    if (best == in->num_seeds || h < best_health) {
                        best = end;
                        best_health = h;
                    }
                }
                ++end;
            }
            if (active == 0 && best < in->num_seeds)
                add(out, capacity, &n, ESPER_POLICY_GERMINATE, &in->seeds[best], "loss plateau");
            start = end;
        }
    }
    return n;
}

EXPORT void esper_policy_destroy(void* state) { free(state); }
