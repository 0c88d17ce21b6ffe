// EventLoop; see event_loop.h.
#include "bus/event_loop.h"

#include <boost/asio/post.hpp>

#include <csignal>

#include "core/log.h"

namespace esper::bus {

namespace asio = boost::asio;

struct EventLoop::Watch {
    zmq::socket_t* socket;
    std::function<void()> on_readable;
    asio::posix::stream_descriptor descriptor;
    Watch(asio::io_context& io, zmq::socket_t& s, std::function<void()> fn)
        : socket(&s), on_readable(std::move(fn)), descriptor(io, s.get(zmq::sockopt::fd)) {}
    ~Watch() { descriptor.release(); }  // the fd belongs to libzmq
};

struct EventLoop::Repeat {
    std::chrono::milliseconds period;
    std::function<void()> fn;
    asio::steady_timer timer;
    Repeat(asio::io_context& io, std::chrono::milliseconds p, std::function<void()> f)
        : period(p), fn(std::move(f)), timer(io) {}
};

EventLoop::EventLoop() : signals_(io_) {}

EventLoop::~EventLoop() {
    // Handlers reference Watch/Repeat objects: cancel them before those die.
    io_.stop();
    for (auto& w : watches_) w->descriptor.cancel();
    for (auto& r : repeats_) r->timer.cancel();
    signals_.cancel();
}

void EventLoop::drain(Watch& w) {
    // Level semantics on top of an edge-triggered fd: call until no message is pending.
    for (int i = 0; i < 100000 && !stopped_; ++i) {
        if (!(w.socket->get(zmq::sockopt::events) & ZMQ_POLLIN)) return;
        w.on_readable();
    }
}

void EventLoop::arm(Watch& w) {
    w.descriptor.async_wait(asio::posix::stream_descriptor::wait_read,
                            [this, &w](const boost::system::error_code& ec) {
                                if (ec || stopped_) return;
                                drain(w);
                                arm(w);
                            });
}

void EventLoop::watch(zmq::socket_t& socket, std::function<void()> on_readable) {
    watches_.push_back(std::make_unique<Watch>(io_, socket, std::move(on_readable)));
    Watch& w = *watches_.back();
    asio::post(io_, [this, &w] { drain(w); });
    arm(w);
    if (watches_.size() == 1) {
        // Fallback for a missed edge (a send on a watched socket can consume it).
        every(std::chrono::milliseconds(100), [this] {
            for (auto& x : watches_) drain(*x);
        });
    }
}

void EventLoop::arm(Repeat& r) {
    r.timer.expires_after(r.period);
    r.timer.async_wait([this, &r](const boost::system::error_code& ec) {
        if (ec || stopped_) return;
        r.fn();
        arm(r);
    });
}

void EventLoop::every(std::chrono::milliseconds period, std::function<void()> fn) {
    repeats_.push_back(std::make_unique<Repeat>(io_, period, std::move(fn)));
    arm(*repeats_.back());
}

void EventLoop::after(std::chrono::milliseconds delay, std::function<void()> fn) {
    once_.push_back(std::make_unique<asio::steady_timer>(io_, delay));
    once_.back()->async_wait([this, fn = std::move(fn)](const boost::system::error_code& ec) {
        if (!ec && !stopped_) fn();
    });
}

void EventLoop::on_signal(std::function<void(int)> fn) {
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    signals_.async_wait([this, fn = std::move(fn)](const boost::system::error_code& ec, int sig) {
        if (!ec) fn(sig);
    });
}

void EventLoop::post(std::function<void()> fn) { asio::post(io_, std::move(fn)); }

void EventLoop::run() {
    stopped_ = false;
    io_.restart();
    io_.run();
}

void EventLoop::stop() {
    asio::post(io_, [this] {
        stopped_ = true;
        io_.stop();
    });
}

}  // namespace esper::bus
