// Boost.Asio integration: one event-loop thread per agent owns its ZeroMQ sockets, timers and
// the SIGINT/SIGTERM handler. A socket is watched through its ZMQ_FD with an Asio
// stream_descriptor; ZMQ_FD is edge-triggered, so after each wake-up the loop calls the handler
// while ZMQ_EVENTS reports POLLIN, and a slow fallback timer re-checks in case an edge was
// consumed by a send on the same socket. Other threads hand work over with post().
//
//   bus::EventLoop loop;
//   loop.watch(sub.socket(), [&] { while (auto m = sub.try_receive()) handle(*m); });
//   loop.every(std::chrono::milliseconds(1000), [&] { worker.heartbeat(); });
//   loop.on_signal([&](int) { loop.stop(); });
//   loop.run();  // returns after stop()
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>
#include <zmq.hpp>

namespace esper::bus {

class EventLoop {
public:
    EventLoop();
    ~EventLoop();
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // Calls on_readable() whenever `socket` has a message; the handler should drain it.
    // The socket must outlive the loop or be unwatched first.
    void watch(zmq::socket_t& socket, std::function<void()> on_readable);
    // Stops watching `socket` (no call after this returns; safe from inside a handler).
    void unwatch(zmq::socket_t& socket);
    // Calls fn every `period` until stop().
    void every(std::chrono::milliseconds period, std::function<void()> fn);
    // Calls fn once after `delay`.
    void after(std::chrono::milliseconds delay, std::function<void()> fn);
    // Calls fn(signal) on SIGINT or SIGTERM.
    void on_signal(std::function<void(int)> fn);
    // Thread-safe: runs fn on the loop thread.
    void post(std::function<void()> fn);

    void run();   // until stop()
    void stop();  // thread-safe
    boost::asio::io_context& context() { return io_; }

private:
    struct Watch;
    struct Repeat;
    void arm(const std::shared_ptr<Watch>& w);
    void drain(Watch& w);
    void arm(Repeat& r);

    boost::asio::io_context io_;
    boost::asio::signal_set signals_;
    // Shared with the pending wait of each watch, so unwatch() can drop one at any time.
    std::vector<std::shared_ptr<Watch>> watches_;
    bool fallback_armed_ = false;
    std::vector<std::unique_ptr<Repeat>> repeats_;
    std::vector<std::unique_ptr<boost::asio::steady_timer>> once_;
    bool stopped_ = false;
};

}  // namespace esper::bus
