// TLS to Redis: the SSL context of the recording_redis_ssl_* directives and
// the per-connection steps, written the way nginx's own upstreams use
// ngx_event_openssl (proxy_ssl_*): verification is done after the handshake
// with SSL_get_verify_result() and a check of the name, before any byte of
// AUTH goes out.

#include "ngx_http_recording_redis_tls.h"

#include <arpa/inet.h>
#include <openssl/x509v3.h>

#include <cstdio>

namespace {

// OpenSSL's own default: deep enough for any public CA's chain.
constexpr ngx_int_t kVerifyDepth = 100;

bool is_ip_address(const ngx_str_t &name) noexcept
{
    unsigned char buf[sizeof(struct in6_addr)];
    auto *text = reinterpret_cast<const char *>(name.data);  // NUL-terminated
    return inet_pton(AF_INET, text, buf) == 1 || inet_pton(AF_INET6, text, buf) == 1;
}

// Copies a directive's value, NUL-terminated: SNI and the name checks take C strings.
bool terminate(ngx_conf_t *cf, ngx_str_t *s) noexcept
{
    auto *data = static_cast<u_char *>(ngx_pnalloc(cf->pool, s->len + 1));
    if (data == nullptr) {
        return false;
    }
    ngx_memcpy(data, s->data, s->len);
    data[s->len] = '\0';
    s->data = data;
    return true;
}

}  // namespace

ngx_conf_bitmask_t ngx_http_recording_redis_ssl_protocols[] = {
    {ngx_string("TLSv1"), NGX_SSL_TLSv1},
    {ngx_string("TLSv1.1"), NGX_SSL_TLSv1_1},
    {ngx_string("TLSv1.2"), NGX_SSL_TLSv1_2},
    {ngx_string("TLSv1.3"), NGX_SSL_TLSv1_3},
    {ngx_null_string, 0},
};

void ngx_http_recording_redis_tls_defaults(ngx_http_recording_redis_tls_t *tls) noexcept
{
    ngx_conf_init_value(tls->verify, 1);
    if (tls->protocols == 0) {
        tls->protocols = NGX_CONF_BITMASK_SET | NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3;
    }
}

ngx_int_t ngx_http_recording_redis_tls_init(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    ngx_http_recording_redis_tls_t *tls = &rmcf->tls;
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf->servers.elts);
    bool needed = false;
    for (ngx_uint_t i = 0; i < rmcf->servers.nelts; i++) {
        needed = needed || servers[i]->ssl;
    }
    if (!needed) {
        return NGX_OK;
    }

    if (tls->certificate.len != 0 && tls->certificate_key.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"recording_redis_ssl_certificate_key\" is defined for certificate \"%V\"",
                      &tls->certificate);
        return NGX_ERROR;
    }
    if (tls->certificate_key.len != 0 && tls->certificate.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"recording_redis_ssl_certificate_key\" is defined without \"recording_redis_ssl_certificate\"");
        return NGX_ERROR;
    }
    if (tls->name.len != 0 && !terminate(cf, &tls->name)) {
        return NGX_ERROR;
    }

    tls->ssl = static_cast<ngx_ssl_t *>(ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t)));
    if (tls->ssl == nullptr) {
        return NGX_ERROR;
    }
    tls->ssl->log = cf->log;
    if (ngx_ssl_create(tls->ssl, tls->protocols, nullptr) != NGX_OK) {
        return NGX_ERROR;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        ngx_ssl_cleanup_ctx(tls->ssl);
        return NGX_ERROR;
    }
    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = tls->ssl;
    // A write that could not finish is retried from the client's queue,
    // which may have grown, and so moved, meanwhile: OpenSSL must accept it.
    // Partial writes: SSL_write reports each record that went out, so the
    // client knows which commands left (a cluster resends only those that
    // did not), as it does on plain TCP.
    SSL_CTX_set_mode(tls->ssl->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);

    if (tls->certificate.len != 0
        && ngx_ssl_certificate(cf, tls->ssl, &tls->certificate, &tls->certificate_key, nullptr) != NGX_OK)
    {
        return NGX_ERROR;
    }
    if (tls->verify) {
        if (tls->trusted_certificate.len != 0) {
            if (ngx_ssl_trusted_certificate(cf, tls->ssl, &tls->trusted_certificate, kVerifyDepth) != NGX_OK) {
                return NGX_ERROR;
            }
        } else if (SSL_CTX_set_default_verify_paths(tls->ssl->ctx) != 1) {
            ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                          const_cast<char *>("recording_redis_ssl_verify: the system's CA certificates cannot be loaded"));
            return NGX_ERROR;
        }
    }

    for (ngx_uint_t i = 0; i < rmcf->servers.nelts; i++) {
        ngx_http_recording_redis_server_t *s = servers[i];
        if (!s->ssl) {
            continue;
        }
        s->tls = tls;
        if (!tls->verify && s->login.password.len != 0) {
            ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                          "recording_redis_ssl_verify is off: the password for \"%V\" goes to a server "
                          "whose certificate is not checked", &s->name);
        }
    }
    return NGX_OK;
}

ngx_int_t ngx_http_recording_redis_tls_handshake(ngx_connection_t *c, const ngx_http_recording_redis_tls_t *tls,
                                                 const ngx_str_t &name) noexcept
{
    if (ngx_ssl_create_connection(tls->ssl, c, NGX_SSL_CLIENT) != NGX_OK) {
        return NGX_ERROR;
    }
    // RFC 6066: SNI names hosts, never addresses.
    if (name.len != 0 && !is_ip_address(name)
        && SSL_set_tlsext_host_name(c->ssl->connection, reinterpret_cast<char *>(name.data)) != 1)
    {
        ngx_ssl_error(NGX_LOG_ERR, c->log, 0, const_cast<char *>("recording: SSL_set_tlsext_host_name(\"%V\") failed"),
                      &name);
        return NGX_ERROR;
    }
    return ngx_ssl_handshake(c);
}

const char *ngx_http_recording_redis_tls_refusal(ngx_connection_t *c, const ngx_http_recording_redis_tls_t *tls,
                                                 const ngx_str_t &name, char *buf, size_t size) noexcept
{
    if (!tls->verify) {
        return nullptr;
    }
    long rc = SSL_get_verify_result(c->ssl->connection);
    if (rc != X509_V_OK) {
        std::snprintf(buf, size, "TLS certificate verify failed: %s", X509_verify_cert_error_string(rc));
        return buf;
    }
    bool matches;
    if (is_ip_address(name)) {
        X509 *cert = SSL_get_peer_certificate(c->ssl->connection);
        matches = cert != nullptr && X509_check_ip_asc(cert, reinterpret_cast<const char *>(name.data), 0) == 1;
        X509_free(cert);
    } else {
        ngx_str_t host = name;
        matches = ngx_ssl_check_host(c, &host) == NGX_OK;
    }
    if (!matches) {
        std::snprintf(buf, size, "TLS certificate does not match \"%.*s\"", static_cast<int>(name.len),
                      reinterpret_cast<const char *>(name.data));
        return buf;
    }
    return nullptr;
}
