// The dashboard's HTTP server (agents/http_server.h) on Boost.Beast: one Session per connection,
// reading requests with a bounded parser and answering them in order; a request for an event
// stream turns its session into a writer of queued SSE frames. Everything runs on the caller's
// io_context thread.
#include "agents/http_server.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <optional>

#include "core/error.h"
#include "core/log.h"

namespace esper::agents {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

Logger& log() { return logger("agents.http"); }

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// application/x-www-form-urlencoded decoding of one query component.
std::string url_decode(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] == '%' && i + 2 < s.size() && hex_digit(s[i + 1]) >= 0 &&
                   hex_digit(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

HttpRequest to_request(const http::request<http::empty_body>& r) {
    HttpRequest out;
    out.method = std::string(r.method_string());
    const std::string_view target(r.target().data(), r.target().size());
    const size_t q = target.find('?');
    out.path = url_decode(target.substr(0, q));
    if (q != std::string_view::npos) {
        std::string_view rest = target.substr(q + 1);
        while (!rest.empty()) {
            const size_t amp = rest.find('&');
            const std::string_view part = rest.substr(0, amp);
            const size_t eq = part.find('=');
            out.query[url_decode(part.substr(0, eq))] =
                eq == std::string_view::npos ? std::string() : url_decode(part.substr(eq + 1));
            rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
        }
    }
    if (auto it = r.find("Last-Event-ID"); it != r.end())
        out.last_event_id = std::string(it->value().data(), it->value().size());
    return out;
}

}  // namespace

class Session;

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
    Impl(asio::io_context& io_, HttpServerConfig c)
        : io(io_), config(std::move(c)), acceptor(io_), keepalive(io_) {}

    void accept();
    void arm_keepalive();
    void prune();

    asio::io_context& io;
    HttpServerConfig config;
    Handler handler;
    std::function<bool(const HttpRequest&)> is_stream;
    StreamOpen on_open;
    tcp::acceptor acceptor;
    asio::steady_timer keepalive;
    std::vector<std::weak_ptr<Session>> sessions;
    bool stopped = false;
};

class Session : public std::enable_shared_from_this<Session>, public HttpServer::Stream {
public:
    Session(tcp::socket socket, std::weak_ptr<HttpServer::Impl> server)
        : stream_(std::move(socket)), server_(std::move(server)) {}

    void start() { read(); }
    bool streaming() const { return streaming_; }

    void send(std::string_view event, std::string_view data, uint64_t id) override {
        std::string frame;
        if (!event.empty()) frame += "event: " + std::string(event) + "\n";
        if (id != 0) frame += "id: " + std::to_string(id) + "\n";
        size_t start = 0;
        while (start <= data.size()) {
            const size_t nl = data.find('\n', start);
            frame += "data: ";
            frame += data.substr(start, nl == std::string_view::npos ? nl : nl - start);
            frame += "\n";
            if (nl == std::string_view::npos) break;
            start = nl + 1;
        }
        frame += "\n";
        enqueue(std::move(frame));
    }
    void comment(std::string_view text) { enqueue(": " + std::string(text) + "\n\n"); }

    void close() {
        if (closed_) return;
        closed_ = true;
        beast::error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
        stream_.close();
    }

private:
    void read() {
        parser_.emplace();
        parser_->header_limit(16 * 1024);
        stream_.expires_after(std::chrono::seconds(60));
        http::async_read(
            stream_, buffer_, *parser_,
            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
    }

    void on_read(beast::error_code ec) {
        if (ec) return close();  // closed, timed out, or a request we do not take (a body)
        auto server = server_.lock();
        if (!server || server->stopped) return close();
        const http::request<http::empty_body>& req = parser_->get();
        const HttpRequest request = to_request(req);
        if (req.method() == http::verb::get && server->is_stream && server->is_stream(request))
            return open_stream(*server, request);
        HttpResponse r;
        if (req.method() != http::verb::get && req.method() != http::verb::head) {
            r.status = 405;
            r.body = "only GET and HEAD\n";
        } else {
            try {
                r = server->handler(request);
            } catch (const std::exception& e) {
                ESPER_LOG_WARN(log(), "path=", request.path, " handler failed: ", e.what());
                r = HttpResponse{500, "text/plain; charset=utf-8", "internal error\n", {}};
            }
        }
        auto res = std::make_shared<http::response<http::string_body>>(
            static_cast<http::status>(r.status), req.version());
        res->set(http::field::server, "esper");
        res->set(http::field::content_type, r.content_type);
        res->set("X-Content-Type-Options", "nosniff");
        for (const auto& [k, v] : r.headers) res->set(k, v);
        res->keep_alive(req.keep_alive());
        if (req.method() == http::verb::head) {
            res->content_length(r.body.size());
        } else {
            res->body() = std::move(r.body);
            res->prepare_payload();
        }
        http::async_write(stream_, *res,
                          [self = shared_from_this(), res](beast::error_code wec, size_t) {
                              if (wec || !res->keep_alive()) return self->close();
                              self->read();
                          });
    }

    void open_stream(HttpServer::Impl& server, const HttpRequest& request) {
        streaming_ = true;
        stream_.expires_never();
        enqueue(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            "Connection: keep-alive\r\nX-Accel-Buffering: no\r\n\r\n");
        if (server.on_open) server.on_open(*this, request);
        watch_close();
    }

    // A stream's client sends nothing more; a read that ends means it went away.
    void watch_close() {
        stream_.socket().async_read_some(asio::buffer(sink_),
                                         [self = shared_from_this()](beast::error_code ec, size_t) {
                                             if (ec) return self->close();
                                             self->watch_close();
                                         });
    }

    void enqueue(std::string bytes) {
        if (closed_) return;
        auto server = server_.lock();
        const size_t limit = server ? server->config.max_stream_backlog_bytes : 0;
        if (backlog_ + bytes.size() > limit) {
            ESPER_LOG_WARN(log(), "event stream client too slow (", backlog_,
                           " bytes queued); closing it");
            return close();
        }
        backlog_ += bytes.size();
        out_.push_back(std::move(bytes));
        if (!writing_) write_next();
    }

    void write_next() {
        writing_ = true;
        asio::async_write(stream_.socket(), asio::buffer(out_.front()),
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->backlog_ -= self->out_.front().size();
                              self->out_.pop_front();
                              if (ec) return self->close();
                              if (self->out_.empty()) {
                                  self->writing_ = false;
                                  return;
                              }
                              self->write_next();
                          });
    }

    beast::tcp_stream stream_;
    std::weak_ptr<HttpServer::Impl> server_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::empty_body>> parser_;
    bool streaming_ = false, writing_ = false, closed_ = false;
    std::deque<std::string> out_;
    size_t backlog_ = 0;
    char sink_[256];
};

void HttpServer::Impl::prune() {
    std::erase_if(sessions, [](const std::weak_ptr<Session>& s) { return s.expired(); });
}

void HttpServer::Impl::accept() {
    acceptor.async_accept([self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
        if (self->stopped) return;
        if (!ec) {
            self->prune();
            if (self->sessions.size() >= self->config.max_connections) {
                beast::error_code ignored;
                socket.close(ignored);  // at capacity: refuse rather than queue
            } else {
                auto s = std::make_shared<Session>(std::move(socket), self);
                self->sessions.push_back(s);
                s->start();
            }
        }
        self->accept();
    });
}

void HttpServer::Impl::arm_keepalive() {
    keepalive.expires_after(std::chrono::milliseconds(config.keepalive_comment_ms));
    keepalive.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (ec || self->stopped) return;
        for (auto& w : self->sessions)
            if (auto s = w.lock(); s && s->streaming()) s->comment("keepalive");
        self->arm_keepalive();
    });
}

HttpServer::HttpServer(asio::io_context& io, HttpServerConfig config, Handler handler,
                       std::function<bool(const HttpRequest&)> is_stream, StreamOpen on_open)
    : impl_(std::make_shared<Impl>(io, std::move(config))) {
    impl_->handler = std::move(handler);
    impl_->is_stream = std::move(is_stream);
    impl_->on_open = std::move(on_open);
    beast::error_code ec;
    const auto address = asio::ip::make_address(impl_->config.address, ec);
    if (ec)
        ESPER_THROW(kInvalidInput, "http address '", impl_->config.address, "': ", ec.message());
    const tcp::endpoint endpoint(address, impl_->config.port);
    tcp::acceptor& a = impl_->acceptor;
    a.open(endpoint.protocol(), ec);
    if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) a.bind(endpoint, ec);
    if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        ESPER_THROW(kFailed, "cannot serve http on ", impl_->config.address, ":",
                    impl_->config.port, ": ", ec.message());
    impl_->accept();
    impl_->arm_keepalive();
}

HttpServer::~HttpServer() { stop(); }

uint16_t HttpServer::port() const {
    beast::error_code ec;
    return impl_->acceptor.local_endpoint(ec).port();
}

void HttpServer::broadcast(std::string_view event, std::string_view data, uint64_t id) {
    for (auto& w : impl_->sessions)
        if (auto s = w.lock(); s && s->streaming()) s->send(event, data, id);
}

size_t HttpServer::streams() const {
    size_t n = 0;
    for (auto& w : impl_->sessions)
        if (auto s = w.lock(); s && s->streaming()) ++n;
    return n;
}

void HttpServer::stop() {
    if (impl_->stopped) return;
    impl_->stopped = true;
    beast::error_code ec;
    impl_->acceptor.close(ec);
    impl_->keepalive.cancel();
    for (auto& w : impl_->sessions)
        if (auto s = w.lock()) s->close();
}

HttpResponse http_not_found(std::string_view path) {
    return {404, "text/plain; charset=utf-8", "not found: " + std::string(path) + "\n", {}};
}

}  // namespace esper::agents
