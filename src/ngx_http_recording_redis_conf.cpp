// `recording_redis`: its arguments read into a server (addresses resolved
// once, at configuration time, the login, cluster or not); one server per
// distinct set of arguments, shared by the locations that name it.

#include "ngx_http_recording_redis_conf.h"

#include <string_view>

namespace {

constexpr ngx_int_t kDefaultRedisPort = 6379;

// Copies `text` into the pool, NUL-terminated (for system calls and
// OpenSSL).
ngx_str_t copy_terminated(ngx_pool_t *pool, const u_char *text, size_t len) noexcept
{
    ngx_str_t copy = {0, static_cast<u_char *>(ngx_pnalloc(pool, len + 1))};
    if (copy.data != nullptr) {
        ngx_memcpy(copy.data, text, len);
        copy.data[len] = '\0';
        copy.len = len;
    }
    return copy;
}

// Resolves one address of `recording_redis`: "host[:port]" (resolved here,
// once, so that a worker never blocks on a lookup) or "unix:/path".
bool resolve_redis_address(ngx_conf_t *cf, ngx_str_t *text, RedisAddress *address) noexcept
{
    ngx_memzero(address, sizeof(RedisAddress));
    address->name = *text;

    ngx_url_t u;
    ngx_memzero(&u, sizeof(ngx_url_t));
    u.url = *text;
    u.default_port = static_cast<in_port_t>(kDefaultRedisPort);
    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in \"recording_redis\" address \"%V\"",
                           u.err != nullptr ? u.err : "host not found", text);
        return false;
    }
    ngx_memcpy(&address->sockaddr, u.addrs[0].sockaddr, u.addrs[0].socklen);
    address->socklen = u.addrs[0].socklen;
    if (u.family == AF_UNIX) {
        return true;
    }
    u_char buf[NGX_SOCKADDR_STRLEN + 1];
    size_t len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, buf, NGX_SOCKADDR_STRLEN, 0);
    address->host = copy_terminated(cf->pool, buf, len);
    // What TLS checks: the host as written, an IPv6 address without its brackets.
    ngx_str_t host = u.host;
    if (host.len > 2 && host.data[0] == '[' && host.data[host.len - 1] == ']') {
        host.data++;
        host.len -= 2;
    }
    address->server_name = copy_terminated(cf->pool, host.data, host.len);
    address->port = ngx_inet_get_port(u.addrs[0].sockaddr);
    return address->host.data != nullptr && address->server_name.data != nullptr;
}

// Joins words with spaces, in the configuration's pool.
ngx_str_t join(ngx_conf_t *cf, ngx_str_t *words, ngx_uint_t n) noexcept
{
    size_t len = 0;
    for (ngx_uint_t i = 0; i < n; i++) {
        len += words[i].len + 1;
    }
    ngx_str_t joined = {0, static_cast<u_char *>(ngx_pnalloc(cf->pool, len))};
    if (joined.data == nullptr) {
        return joined;
    }
    for (ngx_uint_t i = 0; i < n; i++) {
        if (i > 0) {
            joined.data[joined.len++] = ' ';
        }
        ngx_memcpy(joined.data + joined.len, words[i].data, words[i].len);
        joined.len += words[i].len;
    }
    return joined;
}

}  // namespace

// Finds or adds the Redis named by `args` (the directive's arguments: one
// address, or seed addresses and "cluster", then optional password=,
// user= and db=), so that every location naming the same Redis shares one
// route per worker.
ngx_http_recording_redis_server_t *ngx_http_recording_add_redis_server(ngx_conf_t *cf, ngx_str_t *args,
                                                                       ngx_uint_t nargs) noexcept
{
    auto *rmcf = static_cast<ngx_http_recording_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_recording_module));

    ngx_str_t spec = join(cf, args, nargs);
    if (spec.data == nullptr) {
        return nullptr;
    }
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(rmcf->servers.elts);
    for (ngx_uint_t i = 0; i < rmcf->servers.nelts; i++) {
        if (servers[i]->spec.len == spec.len && ngx_strncmp(servers[i]->spec.data, spec.data, spec.len) == 0) {
            return servers[i];
        }
    }

    auto *server = static_cast<ngx_http_recording_redis_server_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_recording_redis_server_t)));
    if (server == nullptr
        || ngx_array_init(&server->addresses, cf->pool, 1, sizeof(RedisAddress)) != NGX_OK)
    {
        return nullptr;
    }
    server->spec = spec;
    server->stats_slot = NGX_ERROR;
    server->login.db = -1;

    // The id names this Redis in spool records: everything but the secret.
    server->id.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, spec.len));
    if (server->id.data == nullptr) {
        return nullptr;
    }
    for (ngx_uint_t i = 0; i < nargs; i++) {
        if (ngx_http_recording_starts_with(args[i], "password=")) {
            continue;
        }
        if (server->id.len != 0) {
            server->id.data[server->id.len++] = ' ';
        }
        server->id.len = ngx_cpymem(server->id.data + server->id.len, args[i].data, args[i].len) - server->id.data;
    }

    ngx_uint_t naddresses = 0;
    for (ngx_uint_t i = 0; i < nargs; i++) {
        ngx_str_t &arg = args[i];
        if (arg.len == 7 && ngx_strncmp(arg.data, "cluster", 7) == 0) {
            server->cluster = 1;
        } else if (arg.len == 3 && ngx_strncmp(arg.data, "ssl", 3) == 0) {
            server->ssl = 1;
        } else if (ngx_http_recording_starts_with(arg, "password=")) {
            server->login.password = ngx_http_recording_after(arg, "password=");
            if (server->login.password.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty \"password=\" in \"recording_redis\"");
                return nullptr;
            }
        } else if (ngx_http_recording_starts_with(arg, "user=")) {
            server->login.user = ngx_http_recording_after(arg, "user=");
            if (server->login.user.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "empty \"user=\" in \"recording_redis\"");
                return nullptr;
            }
        } else if (ngx_http_recording_starts_with(arg, "db=")) {
            ngx_str_t db = ngx_http_recording_after(arg, "db=");
            server->login.db = ngx_atoi(db.data, db.len);
            if (server->login.db == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid \"%V\" in \"recording_redis\": "
                                   "a database number is expected", &arg);
                return nullptr;
            }
        } else if (ngx_strlchr(arg.data, arg.data + arg.len, '=') != nullptr) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "unknown parameter \"%V\" in \"recording_redis\"", &arg);
            return nullptr;
        } else {
            auto *address = static_cast<RedisAddress *>(ngx_array_push(&server->addresses));
            if (address == nullptr || !resolve_redis_address(cf, &arg, address)) {
                return nullptr;
            }
            args[naddresses++] = arg;  // the name keeps addresses only: no password in logs
        }
    }
    if (naddresses == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"recording_redis\" needs an address");
        return nullptr;
    }
    if (naddresses > 1 && !server->cluster) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"recording_redis\" takes several addresses only as a cluster's seeds (add \"cluster\")");
        return nullptr;
    }
    if (server->login.user.len != 0 && server->login.password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"user=\" in \"recording_redis\" needs \"password=\"");
        return nullptr;
    }
    auto *addresses = static_cast<RedisAddress *>(server->addresses.elts);
    for (ngx_uint_t i = 0; i < server->addresses.nelts; i++) {
        if (addresses[i].sockaddr.sockaddr.sa_family != AF_UNIX) {
            continue;
        }
        // Nodes are reached at the addresses the cluster announces: IP and port.
        if (server->cluster) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" in \"recording_redis\": a cluster's seeds are host:port, not unix sockets",
                               &addresses[i].name);
            return nullptr;
        }
        // Redis speaks TLS on its TCP port only.
        if (server->ssl) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"ssl\" in \"recording_redis\" needs a host:port, not the unix socket \"%V\"",
                               &addresses[i].name);
            return nullptr;
        }
    }
    if (server->cluster && server->login.db >= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"db=\" cannot be used with \"cluster\" in \"recording_redis\": a cluster has database 0 only");
        return nullptr;
    }
    server->name = join(cf, args, naddresses);
    if (server->name.data == nullptr) {
        return nullptr;
    }

    auto **slot = static_cast<ngx_http_recording_redis_server_t **>(ngx_array_push(&rmcf->servers));
    if (slot == nullptr) {
        return nullptr;
    }
    *slot = server;
    return server;
}

bool ngx_http_recording_numeric_redis_address(RedisAddress *address, const ngx_str_t &name, const ngx_str_t &host,
                                              in_port_t port) noexcept
{
    ngx_memzero(address, sizeof(RedisAddress));
    address->name = name;
    address->host = host;
    address->server_name = host;
    address->port = port;
    auto *text = reinterpret_cast<const char *>(host.data);
    ngx_sockaddr_t &sa = address->sockaddr;
    if (inet_pton(AF_INET, text, &sa.sockaddr_in.sin_addr) == 1) {
        sa.sockaddr_in.sin_family = AF_INET;
        address->socklen = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, text, &sa.sockaddr_in6.sin6_addr) == 1) {
        sa.sockaddr_in6.sin6_family = AF_INET6;
        address->socklen = sizeof(struct sockaddr_in6);
    } else {
        return false;
    }
    ngx_inet_set_port(&sa.sockaddr, port);
    return true;
}
