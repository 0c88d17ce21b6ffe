// The Asio event loop: a watched ZeroMQ socket delivers every message (the ZMQ_FD edge
// semantics are handled), timers fire, post() crosses threads, and stop() ends run().
#include "bus/event_loop.h"

#include <catch2/catch.hpp>
#include <thread>
#include <zmq.hpp>

#include "bus/pubsub.h"

using namespace esper;

TEST_CASE("the event loop delivers every message from a watched socket", "[bus][asio]") {
    zmq::context_t ctx(1);
    bus::Publisher pub(ctx, {.endpoint = "inproc://loop",
                             .sender = "k",
                             .run_id = "r",
                             .reliability = bus::Reliability::kControl,
                             .bind = true});
    bus::Subscriber sub(ctx, {.endpoint = "inproc://loop", .prefixes = {"x"}});
    REQUIRE(pub.wait_for_subscriber("x", 2000));
    bus::EventLoop loop;
    int received = 0;
    int ticks = 0;
    int posted = 0;
    loop.watch(sub.socket(), [&] {
        while (auto m = sub.try_receive()) {
            if (++received == 300) loop.stop();
        }
    });
    loop.every(std::chrono::milliseconds(5), [&] {
        // Publish from the loop thread in bursts, as an agent would.
        for (int i = 0; i < 30 && ticks < 10; ++i)
            pub.publish("x.y", [](auto b) { b.initAnnotation().setText("t"); });
        ++ticks;
    });
    loop.after(std::chrono::milliseconds(5000), [&] { loop.stop(); });  // guard
    std::thread other([&] { loop.post([&] { ++posted; }); });
    loop.run();
    other.join();
    CHECK(received == 300);
    CHECK(sub.sequences().gaps() == 0);
    CHECK(posted == 1);
}

TEST_CASE("an unwatched socket is not called again, even when unwatched from its own handler",
          "[bus][asio]") {
    zmq::context_t ctx(1);
    bus::Publisher pub(ctx, {.endpoint = "inproc://unwatch",
                             .sender = "k",
                             .run_id = "r",
                             .reliability = bus::Reliability::kControl,
                             .bind = true});
    bus::Subscriber sub(ctx, {.endpoint = "inproc://unwatch", .prefixes = {"x"}});
    REQUIRE(pub.wait_for_subscriber("x", 2000));
    bus::EventLoop loop;
    int calls = 0;
    loop.watch(sub.socket(), [&] {
        ++calls;
        loop.unwatch(sub.socket());  // leaves the message queued
    });
    int ticks = 0;
    loop.every(std::chrono::milliseconds(5), [&] {
        if (++ticks <= 3) pub.publish("x.y", [](auto b) { b.initAnnotation().setText("t"); });
        if (ticks == 60) loop.stop();  // 0.3 s: several fallback drains later
    });
    loop.run();
    CHECK(calls == 1);
    CHECK(sub.try_receive().has_value());  // still there: nobody drained it after the unwatch
}
