// Where this process sits in a data-parallel job: rank, world size, local rank (picks the GPU)
// and the rendezvous address. Resolved by a pure function from an environment map that the
// agent fills from getenv (nothing below agents/ reads the environment). Precedence: explicit
// values (flags) > torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) > Open MPI
// (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK: `mpirun -np N esper kasmina`) > Slurm (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID) > a single rank. Open MPI wins over Slurm because mpirun inside
// an allocation leaves the batch step's SLURM_PROCID in every rank. Inconsistent values throw
// esper::Error(kInvalidInput) naming the variable.
#pragma once

#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace esper::kasmina {

struct RankInfo {
    int rank = 0;
    int world = 1;
    int local_rank = 0;
    std::string master_addr = "127.0.0.1";
    int master_port = 29500;
    // Where rank/world came from: "explicit", "torchrun", "openmpi", "slurm" or "default".
    std::string source = "default";

    bool is_leader() const { return rank == 0; }
    friend bool operator==(const RankInfo&, const RankInfo&) = default;
};

// Values given on the command line; each one overrides the environment.
struct RankOverrides {
    std::optional<int> rank;
    std::optional<int> world;
    std::optional<int> local_rank;
    std::optional<std::string> master_addr;
    std::optional<int> master_port;
};

using EnvMap = std::map<std::string, std::string, std::less<>>;

// The variables resolve_rank_info reads; agents copy exactly these from getenv.
std::span<const std::string_view> rank_env_names();

RankInfo resolve_rank_info(const EnvMap& env, const RankOverrides& overrides = {});

}  // namespace esper::kasmina
