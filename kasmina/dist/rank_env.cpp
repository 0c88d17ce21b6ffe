// resolve_rank_info: see rank_env.h. Integers are parsed strictly (no trailing junk, no sign
// tricks) because a typo in RANK silently turning into rank 0 would start two leaders.
#include "kasmina/dist/rank_env.h"

#include <array>
#include <charconv>

#include "core/error.h"

namespace esper::kasmina {

namespace {

constexpr std::array<std::string_view, 13> kNames = {"RANK",
                                                     "WORLD_SIZE",
                                                     "LOCAL_RANK",
                                                     "MASTER_ADDR",
                                                     "MASTER_PORT",
                                                     "SLURM_PROCID",
                                                     "SLURM_NTASKS",
                                                     "SLURM_LOCALID",
                                                     "SLURM_NPROCS",
                                                     "SLURM_STEP_NUM_TASKS",
                                                     "OMPI_COMM_WORLD_RANK",
                                                     "OMPI_COMM_WORLD_SIZE",
                                                     "OMPI_COMM_WORLD_LOCAL_RANK"};

std::optional<std::string> lookup(const EnvMap& env, std::string_view name) {
    auto it = env.find(name);
    if (it == env.end() || it->second.empty()) return std::nullopt;
    return it->second;
}

int parse_int(std::string_view name, const std::string& text) {
    int value = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || ptr != end) {
        ESPER_THROW(kInvalidInput, name, "='", text, "': not an integer");
    }
    return value;
}

std::optional<int> env_int(const EnvMap& env, std::string_view name) {
    auto text = lookup(env, name);
    if (!text) return std::nullopt;
    return parse_int(name, *text);
}

}  // namespace

std::span<const std::string_view> rank_env_names() { return kNames; }

RankInfo resolve_rank_info(const EnvMap& env, const RankOverrides& overrides) {
    RankInfo info;
    const auto t_rank = env_int(env, "RANK");
    const auto t_world = env_int(env, "WORLD_SIZE");
    const auto m_rank = env_int(env, "OMPI_COMM_WORLD_RANK");
    const auto m_world = env_int(env, "OMPI_COMM_WORLD_SIZE");
    const auto s_rank = env_int(env, "SLURM_PROCID");
    auto s_world = env_int(env, "SLURM_NTASKS");
    if (!s_world) s_world = env_int(env, "SLURM_NPROCS");
    std::string rank_name = "rank";
    std::string world_name = "world size";
    std::string local_name = "local rank";

    if (t_rank || t_world) {
        if (!t_rank || !t_world) {
            ESPER_THROW(kInvalidInput,
                        "torchrun environment: RANK and WORLD_SIZE must be set "
                        "together (got only ",
                        t_rank ? "RANK" : "WORLD_SIZE", ")");
        }
        info.rank = *t_rank;
        info.world = *t_world;
        info.local_rank = env_int(env, "LOCAL_RANK").value_or(0);
        info.source = "torchrun";
        rank_name = "RANK";
        world_name = "WORLD_SIZE";
        local_name = "LOCAL_RANK";
    } else if (m_rank || m_world) {
        if (!m_rank || !m_world) {
            ESPER_THROW(kInvalidInput,
                        "Open MPI environment: OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE must "
                        "be set together");
        }
        info.rank = *m_rank;
        info.world = *m_world;
        info.local_rank = env_int(env, "OMPI_COMM_WORLD_LOCAL_RANK").value_or(0);
        info.source = "openmpi";
        rank_name = "OMPI_COMM_WORLD_RANK";
        world_name = "OMPI_COMM_WORLD_SIZE";
        local_name = "OMPI_COMM_WORLD_LOCAL_RANK";
    } else if (s_rank || s_world) {
        if (!s_rank || !s_world) {
            ESPER_THROW(kInvalidInput,
                        "Slurm environment: SLURM_PROCID and SLURM_NTASKS must be "
                        "set together");
        }
        info.rank = *s_rank;
        info.world = *s_world;
        info.local_rank = env_int(env, "SLURM_LOCALID").value_or(0);
        info.source = "slurm";
        rank_name = "SLURM_PROCID";
        world_name = "SLURM_NTASKS";
        local_name = "SLURM_LOCALID";
    }
    if (auto addr = lookup(env, "MASTER_ADDR")) info.master_addr = *addr;
    if (auto port = env_int(env, "MASTER_PORT")) info.master_port = *port;
    std::string port_name = "MASTER_PORT";

    if (overrides.rank || overrides.world || overrides.local_rank) info.source = "explicit";
    if (overrides.rank) {
        info.rank = *overrides.rank;
        rank_name = "--rank";
    }
    if (overrides.world) {
        info.world = *overrides.world;
        world_name = "--world-size";
    }
    if (overrides.local_rank) {
        info.local_rank = *overrides.local_rank;
        local_name = "--local-rank";
    }
    if (overrides.master_addr) info.master_addr = *overrides.master_addr;
    if (overrides.master_port) {
        info.master_port = *overrides.master_port;
        port_name = "--master-port";
    }

    ESPER_CHECK_INPUT(info.world >= 1, world_name, "=", info.world, ": must be >= 1");
    ESPER_CHECK_INPUT(info.rank >= 0, rank_name, "=", info.rank, ": must be >= 0");
    ESPER_CHECK_INPUT(info.rank < info.world, rank_name, "=", info.rank, ": must be < ", world_name,
                      "=", info.world);
    ESPER_CHECK_INPUT(info.local_rank >= 0 && info.local_rank < info.world, local_name, "=",
                      info.local_rank, ": must be in [0, ", world_name, "=", info.world, ")");
    ESPER_CHECK_INPUT(info.master_port >= 1 && info.master_port <= 65535, port_name, "=",
                      info.master_port, ": must be in [1, 65535]");
    ESPER_CHECK_INPUT(!info.master_addr.empty(), "MASTER_ADDR: must not be empty");
    return info;
}

}  // namespace esper::kasmina
