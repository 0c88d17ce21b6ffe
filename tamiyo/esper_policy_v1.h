/* esper_policy_v1: the C ABI of Tamiyo policy plugins (shared libraries loaded with dlopen).
 * Plain C, no allocation across the boundary: the host passes arrays it owns and a caller-sized
 * output array; the plugin writes at most `capacity` decisions and returns how many.
 * A plugin exports three functions named below plus `esper_policy_abi_version()` returning
 * ESPER_POLICY_ABI_VERSION; the host refuses a library whose version differs or that lacks one.
 * Stage and blueprint values are those of DESIGN §4.3/§4.5; NaN means "not measured". */
#ifndef ESPER_POLICY_V1_H
#define ESPER_POLICY_V1_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ESPER_POLICY_ABI_VERSION 1u

/* Decision kinds (tamiyo::DecisionKind). */
enum {
    ESPER_POLICY_GERMINATE = 0,
    ESPER_POLICY_APPROVE = 1,
    ESPER_POLICY_DENY = 2,
    ESPER_POLICY_CULL = 3,
    ESPER_POLICY_CANCEL = 4,
    ESPER_POLICY_FOSSILIZE = 5,
    ESPER_POLICY_ROLLBACK = 6
};

typedef struct esper_policy_seed_v1 {
    uint32_t layer;
    uint32_t seed;
    uint8_t stage;          /* 0 DORMANT ... 10 ROLLED_BACK */
    uint8_t blueprint_kind; /* 0 residual_mlp, 1 lowrank, 2 scale_shift (when it has one) */
    uint8_t reserved[2];
    uint32_t steps_in_stage;
    float alpha;
    float act_mean; /* NaN = not measured, for every float below */
    float act_var;
    float dead_fraction;
    float grad_norm;
    float blueprint_grad_norm;
    float gradient_health;
    float contribution; /* > 0: the seed helps (loss would rise without it) */
    float health;
} esper_policy_seed_v1;

typedef struct esper_policy_run_v1 {
    uint64_t step;
    uint32_t epoch;
    uint32_t plateau; /* 1 when the loss has plateaued */
    uint64_t steps_since_improvement;
    float loss; /* NaN = not measured */
    float accuracy;
    float test_loss;
    float test_accuracy;
    int64_t host_params;
    int64_t blueprint_params;
} esper_policy_run_v1;

typedef struct esper_policy_input_v1 {
    const esper_policy_run_v1* run;
    const esper_policy_seed_v1* seeds; /* every known seed, by layer then seed */
    uint32_t num_seeds;
} esper_policy_input_v1;

typedef struct esper_policy_decision_v1 {
    uint32_t kind; /* ESPER_POLICY_* */
    uint32_t layer;
    uint32_t seed;
    uint32_t blueprint_kind; /* germinate only */
    uint32_t blueprint_size; /* 0 = executor default */
    char strategy[32];       /* NUL-terminated; empty = "linear" */
    char reason[128];        /* NUL-terminated */
} esper_policy_decision_v1;

/* Returns ESPER_POLICY_ABI_VERSION. Symbol: esper_policy_abi_version */
typedef uint32_t (*esper_policy_abi_version_fn)(void);
/* Creates the plugin state. `config` is an optional NUL-terminated string (may be NULL).
 * Writes a NUL-terminated display name into name[name_capacity]. Returns NULL on failure.
 * Symbol: esper_policy_init */
typedef void* (*esper_policy_init_fn)(const char* config, char* name, uint32_t name_capacity);
/* Writes up to `capacity` decisions into `out`; returns how many, or a negative value on an
 * error (the host disables the plugin). Symbol: esper_policy_decide */
typedef int32_t (*esper_policy_decide_fn)(void* state, const esper_policy_input_v1* input,
                                          esper_policy_decision_v1* out, uint32_t capacity);
/* Frees the plugin state. Symbol: esper_policy_destroy */
typedef void (*esper_policy_destroy_fn)(void* state);

#ifdef __cplusplus
}
#endif

#endif /* ESPER_POLICY_V1_H */
