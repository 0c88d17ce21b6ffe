// EventLoop; see event_loop.h.
#include "bus/event_loop.h"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <csignal>

#include "core/log.h"

namespace esper::bus {

namespace asio = boost::asio;

struct EventLoop::Watch {
    zmq::socket_t* socket;
    std::function<void()> on_readable;
    asio::posix::stream_descriptor descriptor;
    bool active = true;  // false once unwatched: pending waits and drains stop touching it
    Watch(asio::io_context& io, zmq::socket_t& s, std::function<void()> fn)
        : socket(&s), on_readable(std::move(fn)), descriptor(io, s.get(zmq::sockopt::fd)) {}
    ~Watch() { close(); }
    void close() {
        active = false;
        // Cancels the pending wait and gives the fd back: it belongs to libzmq.
        if (descriptor.is_open()) descriptor.release();
    }
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
    for (auto& w : watches_) w->close();
    for (auto& r : repeats_) r->timer.cancel();
    signals_.cancel();
}

void EventLoop::drain(Watch& w) {
    // Level semantics on top of an edge-triggered fd: call until no message is pending.
    for (int i = 0; i < 100000 && !stopped_ && w.active; ++i) {
        if (!(w.socket->get(zmq::sockopt::events) & ZMQ_POLLIN)) return;
        w.on_readable();
    }
}

void EventLoop::arm(const std::shared_ptr<Watch>& w) {
    w->descriptor.async_wait(asio::posix::stream_descriptor::wait_read,
                             [this, w](const boost::system::error_code& ec) {
                                 if (ec || stopped_ || !w->active) return;
                                 drain(*w);
                                 if (w->active) arm(w);
                             });
}

void EventLoop::watch(zmq::socket_t& socket, std::function<void()> on_readable) {
    auto w = std::make_shared<Watch>(io_, socket, std::move(on_readable));
    watches_.push_back(w);
    asio::post(io_, [this, w] {
        if (w->active) drain(*w);
    });
    arm(w);
    if (!fallback_armed_) {
        fallback_armed_ = true;
        // Fallback for a missed edge (a send on a watched socket can consume it). A copy, as a
        // handler may watch or unwatch.
        every(std::chrono::milliseconds(100), [this] {
            std::vector<std::shared_ptr<Watch>> all = watches_;
            for (auto& x : all) drain(*x);
        });
    }
}

void EventLoop::unwatch(zmq::socket_t& socket) {
    auto it = std::find_if(watches_.begin(), watches_.end(),
                           [&](const auto& w) { return w->socket == &socket; });
    if (it == watches_.end()) return;
    (*it)->close();
    watches_.erase(it);
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
    signals_.async_wait([fn = std::move(fn)](const boost::system::error_code& ec, int sig) {
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
