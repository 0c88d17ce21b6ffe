// esper_gloo_probe: a stand-in rank for launcher tests that does real Gloo traffic. It resolves
// its rank from the environment exactly as the kasmina agent will (kasmina::resolve_rank_info),
// rendezvous through a FileKvStore in ESPER_KV_DIR, listens on ESPER_NODE_ADDR, then checks an
// all-reduce and a broadcast. Prints one line; exit 0 ok, 1 wrong result, 3 esper::Error.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "kasmina/dist/collectives.h"
#include "kasmina/dist/collectives_gloo.h"
#include "kasmina/dist/rank_env.h"

using namespace esper;
using namespace esper::kasmina;

int main() {
    try {
        EnvMap env;
        for (std::string_view name : rank_env_names()) {
            if (const char* v = std::getenv(std::string(name).c_str())) env.emplace(name, v);
        }
        const RankInfo info = resolve_rank_info(env);
        const char* kv_dir = std::getenv("ESPER_KV_DIR");
        const char* node = std::getenv("ESPER_NODE_ADDR");
        const char* attempt = std::getenv("ESPER_ATTEMPT");
        ESPER_CHECK_INPUT(kv_dir != nullptr, "ESPER_KV_DIR is not set");
        FileKvStore store(kv_dir);
        GlooConfig config;
        config.rank = info.rank;
        config.world = info.world;
        config.hostname = node ? node : "127.0.0.1";
        config.key_prefix = std::string("probe/") + (attempt ? attempt : "0") + "/gloo";
        config.timeout = std::chrono::milliseconds(20000);
        GlooCollectives comm(config, store);
        const std::size_t n = 10007;
        std::vector<double> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<double>((info.rank + 1) * (i + 1));
        comm.all_reduce_sum(v.data(), n);
        const double ranks_sum = info.world * (info.world + 1) / 2.0;
        bool ok = true;
        for (std::size_t i = 0; i < n; ++i) {
            ok = ok && v[i] == ranks_sum * static_cast<double>(i + 1);
        }
        Bytes leader(config.hostname.begin(), config.hostname.end());
        broadcast_bytes(comm, leader, 0);
        comm.barrier();
        std::printf("gloo-probe rank=%d world=%d node=%s leader=%s sum=%s\n", info.rank, info.world,
                    config.hostname.c_str(), std::string(leader.begin(), leader.end()).c_str(),
                    ok ? "ok" : "WRONG");
        return ok ? 0 : 1;
    } catch (const Error& e) {
        std::fprintf(stderr, "gloo-probe: %s\n", e.what());
        return 3;
    }
}
