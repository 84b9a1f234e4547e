// The WebSocket handshake: RFC 6455's checks -> the site (from the shared
// cache, else from Redis) -> 101 -> ngx_http_recording_websocket serves
// the connection. A refusal is the contract's HTTP answer, as for a POST.

#include "ngx_http_recording_websocket_handshake.h"

#include <exception>
#include <new>
#include <optional>

#include "ngx_http_recording_http.h"
#include "ngx_http_recording_site.h"
#include "ngx_http_recording_stats.h"
#include "ngx_http_recording_websocket.h"
#include "outcome.h"
#include "websocket.h"

using recording::Outcome;

namespace {

using Waiter = ngx_http_recording_waiter_t;

// nginx names no status 426.
constexpr ngx_uint_t kUpgradeRequired = 426;
constexpr std::string_view kWebSocketGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// A handshake waiting for the site's settings from Redis. It outlives the
// request when the client goes first: the lookup's answer then frees it.
struct Handshake {
    Waiter waiter;  // first: the lookup's answer finds the handshake by it
    ngx_http_recording_loc_conf_t *conf;
    std::string_view site_id;  // in the request's pool
    std::string_view key;      // Sec-WebSocket-Key, in the request's pool
};

bool header_has_token(ngx_table_elt_t *h, std::string_view token)
{
    if (h == nullptr) {
        return false;
    }
    std::string_view value = ngx_http_recording_view(h->value);
    while (!value.empty()) {
        size_t comma = value.find(',');
        std::string_view item = value.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) {
            item.remove_prefix(1);
        }
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) {
            item.remove_suffix(1);
        }
        if (item.size() == token.size()
            && ngx_strncasecmp((u_char *) item.data(), (u_char *) token.data(), token.size()) == 0)
        {
            return true;
        }
        if (comma == std::string_view::npos) {
            break;
        }
        value.remove_prefix(comma + 1);
    }
    return false;
}

// Sec-WebSocket-Accept: base64(SHA-1(key + the RFC's GUID)).
ngx_str_t accept_value(ngx_http_request_t *r, std::string_view key)
{
    ngx_sha1_t sha1;
    u_char digest[20];
    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key.data(), key.size());
    ngx_sha1_update(&sha1, kWebSocketGuid.data(), kWebSocketGuid.size());
    ngx_sha1_final(digest, &sha1);
    ngx_str_t raw = {sizeof(digest), digest};
    ngx_str_t encoded = {0, static_cast<u_char *>(ngx_pnalloc(r->pool, ngx_base64_encoded_length(sizeof(digest))))};
    if (encoded.data != nullptr) {
        ngx_encode_base64(&encoded, &raw);
    }
    return encoded;
}

ngx_int_t bad_handshake(ngx_http_request_t *r, ngx_uint_t status)
{
    return ngx_http_recording_send(r, status, "application/json", "{\"error\":\"bad_websocket_handshake\"}");
}

// RFC 6455's checks of the client's handshake: null when it passes, else
// what to answer with.
std::optional<ngx_int_t> check_handshake(ngx_http_request_t *r, ngx_table_elt_t **key)
{
    ngx_uint_t count;
    ngx_table_elt_t *version = ngx_http_recording_find_header(r, "sec-websocket-version", &count);
    if (version == nullptr || !recording::valid_websocket_version(ngx_http_recording_view(version->value))) {
        if (!ngx_http_recording_add_header(r, "Sec-WebSocket-Version", "13")) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return bad_handshake(r, kUpgradeRequired);
    }
    *key = ngx_http_recording_find_header(r, "sec-websocket-key", &count);
    ngx_uint_t connections;
    if (*key == nullptr || count != 1 || !recording::valid_websocket_key(ngx_http_recording_view((*key)->value))
        || !header_has_token(ngx_http_recording_find_header(r, "connection", &connections), "upgrade")
        || r->http_version != NGX_HTTP_VERSION_11)
    {
        return bad_handshake(r, NGX_HTTP_BAD_REQUEST);
    }
    return std::nullopt;
}

// The contract's answer, without an upgrade; what to finalize with.
ngx_int_t refuse(ngx_http_request_t *r, Outcome outcome)
{
    ngx_http_recording_count_outcome(static_cast<size_t>(outcome));
    recording::Response response = recording::response_for(outcome);
    return ngx_http_recording_send(r, static_cast<ngx_uint_t>(response.status), "application/json", response.body);
}

// The site is known and enabled: 101, and the connection is served.
ngx_int_t upgrade(ngx_http_request_t *r, const Handshake &hs)
{
    ngx_str_t accept = accept_value(r, hs.key);
    if (accept.data == nullptr || !ngx_http_recording_add_header(r, "Upgrade", "websocket")
        || !ngx_http_recording_add_header(r, "Sec-WebSocket-Accept", accept))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->keepalive = 0;
    r->header_only = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }
    return ngx_http_recording_websocket_serve(r, hs.conf, hs.site_id);
}

// The site decides: the contract's refusal, or the upgrade (NGX_DONE).
ngx_int_t after_site(ngx_http_request_t *r, const Handshake &hs, const recording::SiteSettings *settings)
{
    if (settings == nullptr) {
        return refuse(r, Outcome::queue_unavailable);
    }
    if (settings->status == recording::SiteStatus::unknown) {
        return refuse(r, Outcome::unknown_site);
    }
    if (settings->status == recording::SiteStatus::disabled) {
        return refuse(r, Outcome::site_disabled);
    }
    return upgrade(r, hs);
}

// The site lookup's word, when it had to ask Redis.
void site_found(Waiter *waiter, const recording::SiteSettings *settings) noexcept
{
    auto *hs = reinterpret_cast<Handshake *>(waiter);
    waiter->in_flight = false;
    ngx_http_request_t *r = waiter->request;
    if (r == nullptr) {
        delete hs;
        return;
    }
    ngx_connection_t *c = r->connection;
    ngx_int_t rc;
    try {
        rc = after_site(r, *hs, settings);
    } catch (const std::exception &) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
    ngx_http_run_posted_requests(c);  // from Redis's event, not the client's
}

Waiter *waiter_of_handshake(void *data)
{
    return &static_cast<Handshake *>(data)->waiter;
}

// The request's pool cleanup: a lookup still waiting frees the handshake.
void release_handshake(void *data) noexcept
{
    auto *hs = *static_cast<Handshake **>(data);
    if (hs->waiter.in_flight) {
        hs->waiter.request = nullptr;
    } else {
        delete hs;
    }
}

}  // namespace

bool ngx_http_recording_websocket_requested(ngx_http_request_t *r) noexcept
{
    if (r->method != NGX_HTTP_GET) {
        return false;
    }
    ngx_uint_t count;
    return header_has_token(ngx_http_recording_find_header(r, "upgrade", &count), "websocket");
}

ngx_int_t ngx_http_recording_websocket_handshake(ngx_http_request_t *r, ngx_http_recording_loc_conf_t *conf,
                                                 std::string_view site_id) noexcept
{
    try {
        ngx_table_elt_t *key = nullptr;
        if (std::optional<ngx_int_t> refused = check_handshake(r, &key)) {
            return *refused;
        }

        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(Handshake *));
        if (cln == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        auto *hs = new Handshake{Waiter{r, false, nullptr, site_found, nullptr}, conf, site_id,
                                 ngx_http_recording_view(key->value)};
        *static_cast<Handshake **>(cln->data) = hs;
        cln->handler = release_handshake;

        // The site, before any upgrade: from the cache, else from Redis.
        recording::SiteSettings settings;
        ngx_int_t rc;
        switch (ngx_http_recording_site_look_up(conf, site_id, waiter_of_handshake, hs, &settings)) {
        case ngx_http_recording_site_answer_e::ready:
            rc = after_site(r, *hs, &settings);
            break;
        case ngx_http_recording_site_answer_e::unavailable:
            rc = after_site(r, *hs, nullptr);
            break;
        case ngx_http_recording_site_answer_e::pending:
        default:
            r->main->count++;  // site_found() goes on
            return NGX_DONE;
        }
        if (rc == NGX_DONE) {
            r->main->count++;  // the connection is served from now on
        }
        return rc;
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "recording: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}
