// A small HTTP/1.1 server on Boost.Beast for `esper dash`: plain GET requests answered by one
// handler, plus server-sent event streams (`text/event-stream`) that the owner pushes to. It runs
// on the io_context of the agent's event loop (bus::EventLoop::context()), so handlers and pushes
// happen on that one thread and the state they read needs no lock. Limits: 16 KiB of request
// header, no request bodies, 64 connections; a stream whose client reads too slowly (more than
// max_stream_backlog_bytes queued) is closed, so a stalled browser never grows the dash.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace esper::agents {

struct HttpRequest {
    std::string method;  // "GET", "HEAD", ...
    std::string path;    // "/api/events" (no query)
    std::map<std::string, std::string> query;
    std::string last_event_id;  // Last-Event-ID header of a reconnecting event stream
};

struct HttpResponse {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // extra headers
};

struct HttpServerConfig {
    std::string address = "127.0.0.1";
    uint16_t port = 0;  // 0 = ephemeral (see HttpServer::port())
    size_t max_connections = 64;
    size_t max_stream_backlog_bytes = 8 << 20;
    int keepalive_comment_ms = 15000;  // an SSE comment line keeps idle proxies from closing
};

class HttpServer {
public:
    class Stream;  // one open event stream
    using Handler = std::function<HttpResponse(const HttpRequest&)>;
    // Called when a client opens an event stream (a GET of a path for which `is_stream` is
    // true); send the stream its first events here.
    using StreamOpen = std::function<void(Stream&, const HttpRequest&)>;

    // Binds and starts accepting; throws esper::Error(kFailed) naming the address on failure.
    HttpServer(boost::asio::io_context& io, HttpServerConfig config, Handler handler,
               std::function<bool(const HttpRequest&)> is_stream = {}, StreamOpen on_open = {});
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    uint16_t port() const;
    // Sends one event to every open stream.
    void broadcast(std::string_view event, std::string_view data, uint64_t id = 0);
    size_t streams() const;
    // Stops accepting and closes every connection.
    void stop();

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

class HttpServer::Stream {
public:
    virtual ~Stream() = default;
    // Queues `event: E\nid: N\ndata: D\n\n` (data lines split at newlines).
    virtual void send(std::string_view event, std::string_view data, uint64_t id = 0) = 0;
};

// The response for a path the handler does not serve.
HttpResponse http_not_found(std::string_view path);

}  // namespace esper::agents
