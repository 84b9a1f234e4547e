# Sourced by scripts/e2e and scripts/record-payloads (bash, set -euo
# pipefail, with $repo set and the current directory there).
#
# e2e_prepare: installs what the browser part needs (Debian's Chromium,
# Node.js, npm, python3-redis; exactly the npm packages of
# examples/recorder's package-lock.json) and builds the module.
#
# e2e_servers NAME: a run directory /tmp/recording-NAME-XXXXXX ($run),
# redis-server and nginx with the module on free loopback ports
# ($redis_port, $redis_pid; $ingest_port: the module; $pages_port: the test
# pages of t/e2e/pages, rrweb and the recorder), all stopped on exit, the
# run directory removed unless E2E_KEEP=1 or the exit status is not 0.

e2e_prepare() {
    scripts/install-deps e2e
    # The Node.js that the pinned playwright-core needs (its engines.node in
    # package-lock.json: 1.61.1 is the newest that takes Debian 12's Node 18;
    # 1.62 and later need 20), checked here so that a too-old node is named
    # before the build, npm ci and the run.
    node_need=$(node -e '
    const lock = require(process.argv[1]);
    const m = /^>=\s*(\d+)/.exec(lock.packages["node_modules/playwright-core"].engines.node);
    console.log(m ? m[1] : 0);' "$repo/examples/recorder/package-lock.json")
    node_have=$(node -p 'process.versions.node')
    if [ "${node_have%%.*}" -lt "$node_need" ]; then
        echo "e2e: Node.js $node_have at $(command -v node); the pinned playwright-core needs $node_need or later" >&2
        exit 1
    fi
    # Only the module: the unit tests (and GoogleTest) are scripts/test's.
    RECORDING_BUILD_TESTS=OFF scripts/build >/dev/null
    # Exactly the versions in package-lock.json; the browser is Debian's.
    (cd examples/recorder && npm ci --no-audit --no-fund --loglevel=error)
}

e2e_servers() {
    e2e_name=$1
    run=$(mktemp -d "/tmp/recording-$e2e_name-XXXXXX")
    chmod 755 "$run"
    redis_pid=""

    cleanup() {
        local status=$?
        # The resend check stops Redis (SIGSTOP) for a while: a stopped Redis
        # would hold nginx's graceful exit and not act on SIGTERM.
        [ -n "$redis_pid" ] && { kill -CONT "$redis_pid" 2>/dev/null || true; }
        if [ -f "$run/logs/nginx.pid" ]; then
            local nginx_pid
            nginx_pid=$(cat "$run/logs/nginx.pid")
            kill -QUIT "$nginx_pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$nginx_pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
        if [ -n "$redis_pid" ]; then
            kill "$redis_pid" 2>/dev/null || true
            wait "$redis_pid" 2>/dev/null || true
        fi
        if [ "${E2E_KEEP:-}" = 1 ] || [ $status -ne 0 ]; then
            echo "$e2e_name: run directory kept: $run"
            if [ $status -ne 0 ]; then
                echo "--- nginx error.log (tail)"
                tail -n 20 "$run/logs/error.log" 2>/dev/null || true
            fi
        else
            rm -rf "$run"
        fi
        exit $status
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    # Three free loopback ports: Redis, the module (the ingest origin) and the
    # pages (another origin, so that the browser sends CORS preflights).
    read -r redis_port ingest_port pages_port < <(/usr/bin/python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

    mkdir -p "$run/logs" "$run/redis" "$run/client_body_temp" "$run/out"
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$run/redis" --save "" \
        --appendonly no --logfile "$run/redis/redis.log" &
    redis_pid=$!
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    # Site 1 records everything; site 2 samples every session out; site 3 is
    # disabled.
    redis-cli -p "$redis_port" hset recording:site:1 enabled 1 sample_rate 1 >/dev/null
    redis-cli -p "$redis_port" hset recording:site:2 enabled 1 sample_rate 0 >/dev/null
    redis-cli -p "$redis_port" hset recording:site:3 enabled 0 >/dev/null
    # A daily budget of 0 sessions: the first batch gets 429 quota_exceeded.
    redis-cli -p "$redis_port" hset recording:site:4 enabled 1 sample_rate 1 daily_sessions 0 >/dev/null

    user=""
    [ "$(id -u)" -eq 0 ] && user="user root root;"   # workers read the repo's files
    cat > "$run/nginx.conf" <<CONF
load_module $repo/build/ngx_http_recording_module.so;
$user
worker_processes 2;
error_log logs/error.log info;
pid logs/nginx.pid;
events { worker_connections 256; }
http {
    types {
        text/html html; text/css css; application/json json map;
        application/javascript js cjs; image/svg+xml svg;
    }
    log_format recording '\$remote_addr "\$request" \$status \$recording_outcome '
                         'session=\$recording_session_id queue=\$recording_queue rid=\$request_id';
    access_log logs/access.log recording;
    client_body_temp_path $run/client_body_temp;
    client_max_body_size 4m;
    recording_redis 127.0.0.1:$redis_port;

    # The module, as on a recording edge.
    server {
        listen 127.0.0.1:$ingest_port;
        location ~ "^/v1/sites/(?<site_id>[0-9]{1,10})/recordings\$" {
            recording_ingest;
            recording_site_id \$site_id;
            recording_queue_shards 4;
            recording_websocket on;
            # The resend check holds Redis stopped while batches wait for
            # their RPUSH replies: none may time out meanwhile.
            recording_redis_read_timeout 60s;
        }
        location = /recording-status { recording_status; }
    }

    # The "customer site": the test pages, rrweb's built files straight from
    # node_modules, and the recorder.
    server {
        listen 127.0.0.1:$pages_port;
        root $repo/t/e2e/pages;
        location /rrweb/ { alias $repo/examples/recorder/node_modules/rrweb/dist/; }
        location = /recorder.js { alias $repo/examples/recorder/recorder.js; }
        location = /e2e-config.js {
            default_type application/javascript;
            return 200 "window.E2E_INGEST = 'http://127.0.0.1:$ingest_port';\n";
        }
        location = /favicon.ico { return 204; }
    }
}
CONF
    nginx -p "$run" -c "$run/nginx.conf" -e logs/error.log
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$pages_port/e2e-config.js" >/dev/null && break
        sleep 0.1
    done

}
