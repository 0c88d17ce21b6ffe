// Tests for kasmina/rank_env: torchrun, Slurm and explicit rank sources, their precedence, and
// the errors for inconsistent or malformed values.
#include "kasmina/dist/rank_env.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>

#include "core/error.h"

using namespace esper;
using namespace esper::kasmina;

namespace {

// The error message of resolve_rank_info, or "" when it succeeded.
std::string error_of(const EnvMap& env, const RankOverrides& overrides = {}) {
    try {
        resolve_rank_info(env, overrides);
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::kInvalidInput);
        return e.message();
    }
    return "";
}

}  // namespace

TEST_CASE("an empty environment is a single rank", "[kasmina][dist]") {
    RankInfo info = resolve_rank_info({});
    CHECK(info.rank == 0);
    CHECK(info.world == 1);
    CHECK(info.local_rank == 0);
    CHECK(info.is_leader());
    CHECK(info.source == "default");
}

TEST_CASE("torchrun variables give rank, world, local rank and the master address",
          "[kasmina][dist]") {
    EnvMap env = {{"RANK", "5"},
                  {"WORLD_SIZE", "8"},
                  {"LOCAL_RANK", "1"},
                  {"MASTER_ADDR", "node0"},
                  {"MASTER_PORT", "29711"}};
    RankInfo info = resolve_rank_info(env);
    CHECK(info.rank == 5);
    CHECK(info.world == 8);
    CHECK(info.local_rank == 1);
    CHECK(info.master_addr == "node0");
    CHECK(info.master_port == 29711);
    CHECK(info.source == "torchrun");
    CHECK_FALSE(info.is_leader());
}

TEST_CASE("slurm variables are used when torchrun's are absent, torchrun wins when both are set",
          "[kasmina][dist]") {
    EnvMap slurm = {{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "1"}};
    RankInfo info = resolve_rank_info(slurm);
    CHECK(info.rank == 3);
    CHECK(info.world == 4);
    CHECK(info.local_rank == 1);
    CHECK(info.source == "slurm");

    EnvMap both = {
        {"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}};
    info = resolve_rank_info(both);
    CHECK(info.rank == 0);
    CHECK(info.world == 2);
    CHECK(info.source == "torchrun");
}

TEST_CASE("open mpi variables give the rank under mpirun and win over the batch step's slurm ones",
          "[kasmina][dist]") {
    EnvMap ompi = {{"OMPI_COMM_WORLD_RANK", "2"},
                   {"OMPI_COMM_WORLD_SIZE", "3"},
                   {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                   {"SLURM_PROCID", "0"},
                   {"SLURM_NTASKS", "1"}};
    RankInfo info = resolve_rank_info(ompi);
    CHECK(info.rank == 2);
    CHECK(info.world == 3);
    CHECK(info.local_rank == 1);
    CHECK(info.source == "openmpi");

    // torchrun's names still come first (emplace: GCC 12 warns falsely on map[k] = "literal")
    ompi.emplace("RANK", "1");
    ompi.emplace("WORLD_SIZE", "2");
    CHECK(resolve_rank_info(ompi).source == "torchrun");

    CHECK_THROWS_WITH(resolve_rank_info({{"OMPI_COMM_WORLD_RANK", "1"}}),
                      Catch::Contains("OMPI_COMM_WORLD_SIZE must be set together"));
    CHECK_THROWS_WITH(
        resolve_rank_info({{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}}),
        Catch::Contains("OMPI_COMM_WORLD_RANK=4: must be < OMPI_COMM_WORLD_SIZE=4"));
}

TEST_CASE("explicit values override the environment", "[kasmina][dist]") {
    EnvMap env = {{"RANK", "1"}, {"WORLD_SIZE", "2"}};
    RankOverrides o;
    o.rank = 2;
    o.world = 3;
    o.master_addr = "10.0.0.7";
    o.master_port = 40000;
    RankInfo info = resolve_rank_info(env, o);
    CHECK(info.rank == 2);
    CHECK(info.world == 3);
    CHECK(info.master_addr == "10.0.0.7");
    CHECK(info.master_port == 40000);
    CHECK(info.source == "explicit");
}

TEST_CASE("inconsistent or malformed rank values are refused naming the variable",
          "[kasmina][dist]") {
    CHECK(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("RANK=2") != std::string::npos);
    CHECK(error_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("WORLD_SIZE=0") != std::string::npos);
    CHECK(error_of({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}).find("RANK=-1") != std::string::npos);
    CHECK(error_of({{"RANK", "1x"}, {"WORLD_SIZE", "2"}}).find("not an integer") !=
          std::string::npos);
    CHECK(error_of({{"RANK", "1"}}).find("WORLD_SIZE") != std::string::npos);
    CHECK(error_of({{"SLURM_PROCID", "1"}}).find("SLURM_NTASKS") != std::string::npos);
    CHECK(error_of({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}}).find("SLURM_PROCID=4") !=
          std::string::npos);
    CHECK(
        error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"}}).find("LOCAL_RANK=2") !=
        std::string::npos);
    CHECK(error_of({{"MASTER_PORT", "70000"}}).find("MASTER_PORT=70000") != std::string::npos);
    RankOverrides o;
    o.rank = 3;
    CHECK(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}}, o).find("--rank=3") != std::string::npos);
}

TEST_CASE("the list of rank variables names every variable the resolver reads", "[kasmina][dist]") {
    auto names = rank_env_names();
    for (const char* n : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                          "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "OMPI_COMM_WORLD_RANK",
                          "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"}) {
        CHECK(std::find(names.begin(), names.end(), n) != names.end());
    }
}
