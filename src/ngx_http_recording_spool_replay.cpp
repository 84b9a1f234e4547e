// The replayer reads records with pread() from its own descriptor of the
// file while writers append through theirs: a record being appended right
// now is not there yet (the writer holds the lock), and reads as the end.
// The file is removed under its lock, when nothing was appended past what
// was replayed. What is in flight, what Redis took and up to where the
// file is replayed is recording::spool::ReplayWindow's to say.

#include "ngx_http_recording_spool_replay.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <new>
#include <string>

#include <hiredis/hiredis.h>

#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_spool_state.h"
#include "ngx_http_recording_stats.h"
#include "spool_format.h"
#include "spool_replay.h"

namespace {

namespace spool = recording::spool;

constexpr ngx_msec_t kScanInterval = 1000;
constexpr ngx_msec_t kRetryFinish = 10;  // while a writer holds the file
// Records in flight, and their bytes.
constexpr spool::ReplayWindow::Limits kReplayWindow = {64, 16 * 1024 * 1024};
// Replay is no request's: its own timeouts, generous for large records.
constexpr RedisTimeouts kReplayTimeouts = {1000, 5000};

ngx_http_recording_spool_state_t &state = ngx_http_recording_spool_state;

struct {
    int lock_fd = -1;  // replay.lock, held: this worker replays
    int fd = -1;       // the spool file
    spool::ReplayWindow window{kReplayWindow};
    std::string record;  // the one being read
    bool exiting = false;
    ngx_event_t scan_timer;
    ngx_event_t resume_timer;  // continues replaying, from outside Redis callbacks
} replay;

bool stopping()
{
    return replay.exiting || ngx_http_recording_worker_exiting();
}

void resume_soon(ngx_msec_t delay) noexcept
{
    if (!replay.resume_timer.timer_set && !stopping()) {
        ngx_add_timer(&replay.resume_timer, delay);
    }
}

ngx_http_recording_redis_server_t *server_by_id(std::string_view id)
{
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(state.conf->servers.elts);
    for (ngx_uint_t i = 0; i < state.conf->servers.nelts; i++) {
        if (ngx_http_recording_view(servers[i]->id) == id) {
            return servers[i];
        }
    }
    return nullptr;
}

// Ends this worker's turn at replaying (the lock goes with the fd).
void stop_replay()
{
    if (replay.fd != -1) {
        ::close(replay.fd);
        replay.fd = -1;
    }
    if (replay.lock_fd != -1) {
        ::close(replay.lock_fd);
        replay.lock_fd = -1;
    }
    replay.window.stop();
}

// Puts the spool file aside for the operator: what it holds cannot be
// replayed as it is (from `offset` on). New records go to a new file.
void set_aside(const char *why, uint64_t offset)
{
    char suffix[48];
    ngx_snprintf(reinterpret_cast<u_char *>(suffix), sizeof(suffix), ".%M.bad%Z", ngx_current_msec);
    std::string to = state.path + suffix;
    ngx_log_error(NGX_LOG_ALERT, state.log, 0, "recording: spool: \"%s\" %s at offset %uL, renamed to \"%s\"",
                  state.path.c_str(), why, offset, to.c_str());
    if (::rename(state.path.c_str(), to.c_str()) != 0) {
        ngx_log_error(NGX_LOG_ALERT, state.log, ngx_errno, "recording: spool: rename(\"%s\") failed",
                      state.path.c_str());
    }
    ngx_http_recording_spool_gone();
}

// Becomes the replaying worker if no other is and there is a file.
bool start_replay()
{
    if (!ngx_http_recording_spool_exists()) {
        return false;
    }
    int lock_fd = ::open(state.lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd == -1) {
        ngx_log_error(NGX_LOG_ERR, state.log, ngx_errno, "recording: spool: open(\"%s\") failed",
                      state.lock_path.c_str());
        return false;
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(lock_fd);  // another worker replays
        return false;
    }
    int fd = ::open(state.path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        ::close(lock_fd);
        return false;
    }
    replay.lock_fd = lock_fd;
    replay.fd = fd;
    char header[spool::kFileHeaderSize];
    uint64_t replayed = 0;
    if (pread(fd, header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))
        || !spool::read_file_header(std::string_view(header, sizeof(header)), &replayed))
    {
        // Cut in its header by a crash before any record, or not ours.
        struct stat st;
        bool empty = fstat(fd, &st) == 0 && st.st_size < static_cast<off_t>(spool::kFileHeaderSize);
        if (!empty) {
            set_aside("is not a spool file", 0);
        }
        stop_replay();
        return false;
    }
    replay.window.start(replayed);
    ngx_log_error(NGX_LOG_NOTICE, state.log, 0, "recording: spool: replaying \"%s\" from offset %uL",
                  state.path.c_str(), replayed);
    return true;
}

// Keeps the acknowledged offset in the file's header.
void note_acknowledged()
{
    std::string offset = spool::encode_offset(replay.window.acknowledged());
    if (pwrite(replay.fd, offset.data(), offset.size(), spool::kReplayedOffsetAt)
        != static_cast<ssize_t>(offset.size()))
    {
        ngx_log_error(NGX_LOG_ERR, state.log, ngx_errno, "recording: spool: cannot note progress in \"%s\"",
                      state.path.c_str());
    }
}

class ReplayCall final : public RedisCall {
public:
    explicit ReplayCall(uint64_t end) : end_(end), generation_(replay.window.generation()) {}

    void on_reply(const redisReply *reply) noexcept override
    {
        bool ok = reply != nullptr && reply->type == REDIS_REPLY_INTEGER;
        spool::ReplayWindow::Answer answer;
        if (replay.fd != -1) {
            answer = replay.window.answer(generation_, end_, ok);
        }
        if (answer.current) {
            if (ok) {
                ngx_http_recording_count(&ngx_http_recording_stats_t::replayed_elements, answer.elements);
            } else if (reply == nullptr && unconfirmed) {
                // Sent again from the acknowledged offset: Redis may hold
                // it twice then.
                ngx_http_recording_count(&ngx_http_recording_stats_t::resent_elements, answer.elements);
            }
            if (answer.advanced) {
                note_acknowledged();
            }
            resume_soon(0);
        }
        delete this;
    }

private:
    uint64_t end_;
    unsigned generation_;
};

enum class Read { record, end, damaged };

// Reads the record at the window's next offset. A record being appended
// right now is not there yet (the writer holds the lock): it reads as the
// end.
Read read_record(spool::Record *record)
{
    auto at = static_cast<off_t>(replay.window.next());
    char header[spool::kRecordHeaderSize];
    ssize_t n = pread(replay.fd, header, sizeof(header), at);
    if (n == 0) {
        return Read::end;
    }
    size_t size = 0;
    if (n != static_cast<ssize_t>(sizeof(header))) {
        return Read::end;  // maybe being written
    }
    if (spool::record_size(std::string_view(header, sizeof(header)), &size) != spool::ReadStatus::ok) {
        return Read::damaged;
    }
    replay.record.resize(size);
    n = pread(replay.fd, replay.record.data(), size, at);
    if (n != static_cast<ssize_t>(size)) {
        return Read::end;  // maybe being written
    }
    if (spool::parse_record(replay.record, record) != spool::ReadStatus::ok) {
        return Read::damaged;
    }
    return Read::record;
}

// Sends records while the window has room; false if the file cannot be
// replayed further (damaged, or records for an unknown Redis).
bool send_more()
{
    while (!stopping() && replay.window.has_room()) {
        spool::Record record;
        Read read = read_record(&record);
        if (read == Read::end) {
            break;
        }
        if (read == Read::damaged) {
            // Only a crash of the machine mid-append leaves this (a crash of
            // nginx cannot cut a write short): what follows is kept aside.
            set_aside("has a damaged record", replay.window.next());
            return false;
        }
        ngx_http_recording_redis_server_t *server = server_by_id(record.server);
        if (server == nullptr) {
            ngx_log_error(NGX_LOG_ALERT, state.log, 0,
                          "recording: spool: records for \"%*s\", which no \"recording_redis\" names",
                          record.server.size(), record.server.data());
            set_aside("cannot be replayed", replay.window.next());
            return false;
        }
        if (!server->route->available()) {
            replay.window.fail();
            break;
        }
        auto *call = new (std::nothrow) ReplayCall(replay.window.next() + replay.record.size());
        if (call == nullptr || !server->route->send(record.key, record.command, call, kReplayTimeouts)) {
            delete call;
            replay.window.fail();
            break;
        }
        ngx_http_recording_count(&ngx_http_recording_stats_t::rpush_commands);
        replay.window.sent(replay.record.size(), record.elements);
    }
    return true;
}

// Everything read was acknowledged: removes the file if nothing was
// appended meanwhile. False when it cannot tell now (a writer holds it)
// or there is more.
bool remove_if_done()
{
    if (flock(replay.fd, LOCK_EX | LOCK_NB) != 0) {
        resume_soon(kRetryFinish);
        return false;
    }
    struct stat st;
    bool done = fstat(replay.fd, &st) == 0 && replay.window.replayed(static_cast<uint64_t>(st.st_size));
    if (!done) {
        // Holding the lock, nobody is appending: a record that still reads
        // short was cut by a crash mid-append, and never answered.
        spool::Record record;
        if (read_record(&record) == Read::end) {
            ngx_log_error(NGX_LOG_WARN, state.log, 0, "recording: spool: \"%s\" ends with a record cut short "
                          "at offset %uL (never acknowledged), dropped", state.path.c_str(), replay.window.next());
            done = ftruncate(replay.fd, static_cast<off_t>(replay.window.next())) == 0;
        }
    }
    if (done) {
        if (::unlink(state.path.c_str()) != 0) {
            ngx_log_error(NGX_LOG_ALERT, state.log, ngx_errno, "recording: spool: unlink(\"%s\") failed",
                          state.path.c_str());
        } else {
            ngx_log_error(NGX_LOG_NOTICE, state.log, 0, "recording: spool: \"%s\" replayed", state.path.c_str());
        }
        ngx_http_recording_spool_gone();
        ngx_http_recording_spool_gauges(0);
    } else {
        resume_soon(0);  // more came: go on
    }
    flock(replay.fd, LOCK_UN);
    return done;
}

void pump() noexcept
{
    try {
        if (replay.fd == -1 && (stopping() || !start_replay())) {
            return;
        }
        if (!send_more()) {
            stop_replay();
            resume_soon(0);  // a new file may be waiting behind
            return;
        }
        switch (replay.window.after_sending(stopping())) {
        case spool::ReplayWindow::Next::wait:
            return;  // each reply resumes
        case spool::ReplayWindow::Next::stop:
            stop_replay();  // Redis is failing: the next scan tries again
            return;
        case spool::ReplayWindow::Next::finish:
            break;
        }
        struct stat st;
        if (fstat(replay.fd, &st) == 0) {
            ngx_http_recording_spool_gauges(st.st_size);
        }
        if (remove_if_done()) {
            stop_replay();
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, state.log, 0, "recording: spool: %s", e.what());
        stop_replay();
    }
}

void on_resume(ngx_event_t *) noexcept
{
    pump();
}

void on_scan_timer(ngx_event_t *ev) noexcept
{
    if (stopping()) {
        return;
    }
    if (replay.fd == -1) {
        pump();
    }
    ngx_add_timer(ev, kScanInterval);
}

void init_timer(ngx_event_t *ev, ngx_event_handler_pt handler, ngx_log_t *log)
{
    ev->handler = handler;
    ev->data = &ngx_http_recording_no_connection;
    ev->log = log;
    ev->cancelable = 1;  // never keeps a worker that is shutting down
}

}  // namespace

void ngx_http_recording_spool_replay_init(ngx_log_t *log) noexcept
{
    replay.exiting = false;
    init_timer(&replay.scan_timer, on_scan_timer, log);
    init_timer(&replay.resume_timer, on_resume, log);
    ngx_add_timer(&replay.scan_timer, 100);
}

void ngx_http_recording_spool_replay_soon() noexcept
{
    resume_soon(kScanInterval);
}

void ngx_http_recording_spool_replay_exit() noexcept
{
    replay.exiting = true;
    if (replay.scan_timer.timer_set) {
        ngx_del_timer(&replay.scan_timer);
    }
    if (replay.resume_timer.timer_set) {
        ngx_del_timer(&replay.resume_timer);
    }
    stop_replay();
}
