// The disk spool.
//
// One file, "recording.spool" in the spool directory, shared by every
// worker: records are appended in the order batches were taken, whichever
// worker took them, so replaying the file front to back keeps every
// session's order. A writer holds an exclusive flock() on the file for
// the time of one append (one writev, and an fdatasync with
// `recording_spool_fsync on`), so appends never interleave.
//
// One worker at a time replays, the one holding the flock() on
// "replay.lock". It sends records with several RPUSH in flight, keeps the
// offset up to which Redis acknowledged them in the file's header (a
// replay cut short, by a failure or a crash, resumes there), follows the
// file as others append, and removes it once Redis has everything: under
// the file's lock, when nothing was appended past what it replayed. A
// writer that then finds the file it holds removed (no link left) starts
// a new one. The file's existence is what tells workers that records are
// waiting, and that new batches must go behind them.
//
// Writes are plain write(2)s from the event loop: a record is in the page
// cache, safe from a crash of nginx, before the batch is answered; with
// `recording_spool_fsync on` it is on the device first, safe from a crash
// of the machine.

#include "ngx_http_recording_spool.h"

#include <fcntl.h>
#include <sys/file.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <new>
#include <optional>
#include <string>

#include <hiredis/hiredis.h>

#include "ngx_http_recording_redis.h"
#include "ngx_http_recording_stats.h"
#include "spool_format.h"

namespace {

namespace spool = recording::spool;

constexpr const char *kSpoolName = "recording.spool";
constexpr const char *kReplayLockName = "replay.lock";
constexpr ngx_msec_t kScanInterval = 1000;
constexpr ngx_msec_t kRetryFinish = 10;                    // while a writer holds the file
constexpr size_t kReplayWindow = 64;                       // records in flight
constexpr size_t kReplayWindowBytes = 16 * 1024 * 1024;
// Replay is no request's: its own timeouts, generous for large records.
constexpr RedisTimeouts kReplayTimeouts = {1000, 5000};

ngx_http_recording_main_conf_t *conf = nullptr;  // this cycle's, in a worker
ngx_log_t *spool_log = nullptr;
std::string spool_path;
std::string lock_path;
bool exiting = false;

bool stopping()
{
    return exiting || ngx_exiting || ngx_terminate || ngx_quit;
}

// Whether the file exists, asked of the system at most once a millisecond.
struct {
    ngx_msec_t at = 0;
    bool checked = false;
    bool exists = false;
} presence;

bool spool_exists()
{
    if (!presence.checked || presence.at != ngx_current_msec) {
        struct stat st;
        presence.exists = ::stat(spool_path.c_str(), &st) == 0;
        presence.at = ngx_current_msec;
        presence.checked = true;
    }
    return presence.exists;
}

void update_gauges(off_t size)
{
    if (ngx_http_recording_stats != nullptr) {
        ngx_http_recording_stats->spool_bytes = static_cast<ngx_atomic_uint_t>(size);
        ngx_http_recording_stats->spool_files = size > 0 ? 1 : 0;
    }
}

// --- Writing ----------------------------------------------------------------

struct {
    int fd = -1;
    bool full = false;     // logged once per spell
    bool failing = false;  // likewise
} writer;

class FileLock {
public:
    explicit FileLock(int fd) : fd_(fd) { locked_ = flock(fd, LOCK_EX) == 0; }
    ~FileLock()
    {
        if (locked_) {
            flock(fd_, LOCK_UN);
        }
    }
    bool locked() const { return locked_; }

private:
    int fd_;
    bool locked_;
};

bool write_all(int fd, const iovec *iov, int iovcnt, size_t total)
{
    ssize_t n = writev(fd, iov, iovcnt);
    if (n == static_cast<ssize_t>(total)) {
        return true;
    }
    if (n >= 0) {
        errno = ENOSPC;  // a short write to a regular file: the disk is full
    }
    return false;
}

void close_writer()
{
    if (writer.fd != -1) {
        ::close(writer.fd);
        writer.fd = -1;
    }
}

// Opens the spool file for appending, creating it if needed.
bool open_writer()
{
    writer.fd = ::open(spool_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (writer.fd == -1) {
        ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: open(\"%s\") failed", spool_path.c_str());
        return false;
    }
    return true;
}

// The spool file locked for an append: reopened if the replayer removed
// it meanwhile; its header written if it is new. Returns its size, or -1.
off_t lock_for_append(std::optional<FileLock> &lock)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        if (writer.fd == -1 && !open_writer()) {
            return -1;
        }
        lock.emplace(writer.fd);
        struct stat st;
        if (!lock->locked() || fstat(writer.fd, &st) != 0) {
            ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: cannot lock \"%s\"",
                          spool_path.c_str());
            return -1;
        }
        if (st.st_nlink == 0) {  // replayed and removed: a new file
            lock.reset();
            close_writer();
            continue;
        }
        if (st.st_size < static_cast<off_t>(spool::kFileHeaderSize)) {
            // New (or cut in its header by a crash, before any record).
            std::string header = spool::file_header();
            iovec iov = {header.data(), header.size()};
            if (ftruncate(writer.fd, 0) != 0 || !write_all(writer.fd, &iov, 1, header.size())) {
                return -1;
            }
            return static_cast<off_t>(header.size());
        }
        return st.st_size;
    }
    return -1;
}

// --- Replaying --------------------------------------------------------------

struct Replay {
    int lock_fd = -1;  // replay.lock, held: this worker replays
    int fd = -1;       // the spool file
    uint64_t next = 0;           // where the next record starts
    uint64_t acknowledged = 0;   // Redis has everything before this
    bool failed = false;         // Redis did not take a record: try later
    unsigned generation = 0;     // late replies of an earlier replay are ignored
    size_t bytes_in_flight = 0;
    enum class State { waiting, taken, refused };
    struct Sent {
        uint64_t end;
        size_t size;
        uint32_t elements;
        State state;
    };
    std::deque<Sent> sent;  // in file order
    std::string record;     // the one being read
} replay;

ngx_event_t scan_timer;
ngx_event_t resume_timer;  // continues replaying, from outside Redis callbacks

void pump() noexcept;

void resume_soon(ngx_msec_t delay) noexcept
{
    if (!resume_timer.timer_set && !stopping()) {
        ngx_add_timer(&resume_timer, delay);
    }
}

ngx_http_recording_redis_server_t *server_by_id(std::string_view id)
{
    auto **servers = static_cast<ngx_http_recording_redis_server_t **>(conf->servers.elts);
    for (ngx_uint_t i = 0; i < conf->servers.nelts; i++) {
        if (servers[i]->id.len == id.size() && ngx_strncmp(servers[i]->id.data, id.data(), id.size()) == 0) {
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
    replay.sent.clear();
    replay.bytes_in_flight = 0;
    replay.generation++;
}

// Puts the spool file aside for the operator: what it holds cannot be
// replayed as it is. New records go to a new file.
void set_aside(const char *why)
{
    char suffix[48];
    ngx_snprintf(reinterpret_cast<u_char *>(suffix), sizeof(suffix), ".%M.bad%Z", ngx_current_msec);
    std::string to = spool_path + suffix;
    ngx_log_error(NGX_LOG_ALERT, spool_log, 0, "recording: spool: \"%s\" %s at offset %uL, renamed to \"%s\"",
                  spool_path.c_str(), why, replay.next, to.c_str());
    if (::rename(spool_path.c_str(), to.c_str()) != 0) {
        ngx_log_error(NGX_LOG_ALERT, spool_log, ngx_errno, "recording: spool: rename(\"%s\") failed",
                      spool_path.c_str());
    }
    presence.checked = false;
}

// Becomes the replaying worker if no other is and there is a file.
bool start_replay()
{
    if (!spool_exists()) {
        return false;
    }
    int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd == -1) {
        ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: open(\"%s\") failed", lock_path.c_str());
        return false;
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(lock_fd);  // another worker replays
        return false;
    }
    int fd = ::open(spool_path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        ::close(lock_fd);
        return false;
    }
    char header[spool::kFileHeaderSize];
    uint64_t replayed = 0;
    if (pread(fd, header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))
        || !spool::read_file_header(std::string_view(header, sizeof(header)), &replayed))
    {
        // Cut in its header by a crash before any record, or not ours.
        struct stat st;
        bool empty = fstat(fd, &st) == 0 && st.st_size < static_cast<off_t>(spool::kFileHeaderSize);
        replay.lock_fd = lock_fd;
        replay.fd = fd;
        replay.next = 0;
        if (!empty) {
            set_aside("is not a spool file");
        }
        stop_replay();
        return false;
    }
    replay.lock_fd = lock_fd;
    replay.fd = fd;
    replay.next = replayed;
    replay.acknowledged = replayed;
    replay.failed = false;
    replay.generation++;
    ngx_log_error(NGX_LOG_NOTICE, spool_log, 0, "recording: spool: replaying \"%s\" from offset %uL",
                  spool_path.c_str(), replayed);
    return true;
}

// Keeps the acknowledged offset in the file's header.
void note_acknowledged()
{
    uint64_t before = replay.acknowledged;
    while (!replay.sent.empty() && replay.sent.front().state == Replay::State::taken) {
        replay.acknowledged = replay.sent.front().end;
        replay.sent.pop_front();
    }
    if (replay.acknowledged != before) {
        std::string offset = spool::encode_offset(replay.acknowledged);
        if (pwrite(replay.fd, offset.data(), offset.size(), spool::kReplayedOffsetAt)
            != static_cast<ssize_t>(offset.size()))
        {
            ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: cannot note progress in \"%s\"",
                          spool_path.c_str());
        }
    }
}

class ReplayCall final : public RedisCall {
public:
    explicit ReplayCall(uint64_t end) : end_(end), generation_(replay.generation) {}

    void on_reply(const redisReply *reply) noexcept override
    {
        if (replay.fd != -1 && generation_ == replay.generation) {
            bool ok = reply != nullptr && reply->type == REDIS_REPLY_INTEGER;
            for (Replay::Sent &sent : replay.sent) {
                if (sent.end == end_) {
                    replay.bytes_in_flight -= sent.size;
                    sent.state = ok ? Replay::State::taken : Replay::State::refused;
                    if (ok) {
                        ngx_http_recording_count(&ngx_http_recording_stats_t::replayed_elements, sent.elements);
                    } else if (reply == nullptr && unconfirmed) {
                        // Sent again from the acknowledged offset: Redis
                        // may hold it twice then.
                        ngx_http_recording_count(&ngx_http_recording_stats_t::resent_elements, sent.elements);
                    }
                    break;
                }
            }
            if (!ok) {
                replay.failed = true;  // the rest waits for a later try
            }
            note_acknowledged();
            resume_soon(0);
        }
        delete this;
    }

private:
    uint64_t end_;
    unsigned generation_;
};

enum class Read { record, end, damaged };

// Reads the record at replay.next. A record being appended right now is
// not there yet (the writer holds the lock): it reads as the end.
Read read_record(spool::Record *record)
{
    char header[spool::kRecordHeaderSize];
    ssize_t n = pread(replay.fd, header, sizeof(header), static_cast<off_t>(replay.next));
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
    n = pread(replay.fd, replay.record.data(), size, static_cast<off_t>(replay.next));
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
    while (!replay.failed && !stopping() && replay.sent.size() < kReplayWindow
           && replay.bytes_in_flight < kReplayWindowBytes)
    {
        spool::Record record;
        Read read = read_record(&record);
        if (read == Read::end) {
            break;
        }
        if (read == Read::damaged) {
            // Only a crash of the machine mid-append leaves this (a crash of
            // nginx cannot cut a write short): what follows is kept aside.
            set_aside("has a damaged record");
            return false;
        }
        ngx_http_recording_redis_server_t *server = server_by_id(record.server);
        if (server == nullptr) {
            ngx_log_error(NGX_LOG_ALERT, spool_log, 0,
                          "recording: spool: records for \"%*s\", which no \"recording_redis\" names",
                          record.server.size(), record.server.data());
            set_aside("cannot be replayed");
            return false;
        }
        if (!server->route->available()) {
            replay.failed = true;
            break;
        }
        uint64_t end = replay.next + replay.record.size();
        auto *call = new (std::nothrow) ReplayCall(end);
        if (call == nullptr || !server->route->send(record.key, record.command, call, kReplayTimeouts)) {
            delete call;
            replay.failed = true;
            break;
        }
        ngx_http_recording_count(&ngx_http_recording_stats_t::rpush_commands);
        replay.sent.push_back({end, replay.record.size(), record.elements, Replay::State::waiting});
        replay.bytes_in_flight += replay.record.size();
        replay.next = end;
    }
    return true;
}

bool waiting_for_replies()
{
    for (const Replay::Sent &sent : replay.sent) {
        if (sent.state == Replay::State::waiting) {
            return true;
        }
    }
    return false;
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
    bool done = fstat(replay.fd, &st) == 0 && static_cast<uint64_t>(st.st_size) <= replay.next;
    if (!done) {
        // Holding the lock, nobody is appending: a record that still reads
        // short was cut by a crash mid-append, and never answered.
        spool::Record record;
        if (read_record(&record) == Read::end) {
            ngx_log_error(NGX_LOG_WARN, spool_log, 0, "recording: spool: \"%s\" ends with a record cut short "
                          "at offset %uL (never acknowledged), dropped", spool_path.c_str(), replay.next);
            done = ftruncate(replay.fd, static_cast<off_t>(replay.next)) == 0;
        }
    }
    if (done) {
        if (::unlink(spool_path.c_str()) != 0) {
            ngx_log_error(NGX_LOG_ALERT, spool_log, ngx_errno, "recording: spool: unlink(\"%s\") failed",
                          spool_path.c_str());
        } else {
            ngx_log_error(NGX_LOG_NOTICE, spool_log, 0, "recording: spool: \"%s\" replayed", spool_path.c_str());
        }
        presence.checked = false;
        update_gauges(0);
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
        if (waiting_for_replies()) {
            return;  // each reply resumes
        }
        if (replay.failed || stopping()) {
            stop_replay();  // Redis is failing: the next scan tries again
            return;
        }
        if (!replay.sent.empty()) {
            return;
        }
        struct stat st;
        if (fstat(replay.fd, &st) == 0) {
            update_gauges(st.st_size);
        }
        if (remove_if_done()) {
            stop_replay();
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, spool_log, 0, "recording: spool: %s", e.what());
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

}  // namespace

bool ngx_http_recording_spool_enabled() noexcept
{
    return conf != nullptr;
}

bool ngx_http_recording_spool_holds_records() noexcept
{
    return conf != nullptr && spool_exists();
}

bool ngx_http_recording_spool_has_room() noexcept
{
    if (conf == nullptr || writer.failing) {
        return false;
    }
    // Full: the last batch did not fit, and the file it did not fit in has
    // not been replayed since. How big the next batch is, nobody knows.
    return !(writer.full && spool_exists());
}

bool ngx_http_recording_spool_write(ngx_http_recording_redis_server_t *server, std::string_view key,
                                    uint32_t elements, std::string_view command) noexcept
{
    try {
        spool::Record record;
        record.server = {reinterpret_cast<const char *>(server->id.data), server->id.len};
        record.key = key;
        record.elements = elements;
        record.command = command;
        std::string prefix = spool::record_prefix(record);
        size_t size = prefix.size() + command.size();

        std::optional<FileLock> lock;
        off_t at = lock_for_append(lock);
        if (at == -1) {
            if (!writer.failing) {
                ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: cannot write to \"%s\"",
                              spool_path.c_str());
            }
            writer.failing = true;
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_write_failures, elements);
            return false;
        }
        presence.exists = true;
        if (at + static_cast<off_t>(size) > conf->spool_max_size) {
            if (!writer.full) {
                ngx_log_error(NGX_LOG_ERR, spool_log, 0, "recording: spool: full (max_size=%O), refusing batches",
                              conf->spool_max_size);
            }
            writer.full = true;
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_full_refusals, elements);
            return false;
        }
        writer.full = false;

        iovec iov[2] = {{prefix.data(), prefix.size()}, {const_cast<char *>(command.data()), command.size()}};
        bool written = write_all(writer.fd, iov, 2, size);
        if (written && conf->spool_fsync && fdatasync(writer.fd) != 0) {
            written = false;
        }
        if (!written) {
            if (!writer.failing) {
                ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: write to \"%s\" failed",
                              spool_path.c_str());
            }
            writer.failing = true;
            // Whatever part reached the file is cut off again, so the next
            // record starts where this one did.
            if (ftruncate(writer.fd, at) != 0) {
                close_writer();
            }
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_write_failures, elements);
            return false;
        }
        writer.failing = false;
        update_gauges(at + static_cast<off_t>(size));
        ngx_http_recording_count(&ngx_http_recording_stats_t::spooled_elements, elements);
        // The replaying worker, if any, finds it; else this one starts soon.
        resume_soon(kScanInterval);
        return true;
    } catch (const std::exception &) {
        return false;
    }
}

namespace {

// The directory's parent when the directory itself does not exist yet:
// nginx makes only the last component, as for client_body_temp_path.
std::string parent_of(const std::string &dir)
{
    std::string::size_type slash = dir.find_last_of('/');
    if (slash == std::string::npos) {
        return ".";
    }
    return slash == 0 ? std::string("/") : dir.substr(0, slash);
}

}  // namespace

char *ngx_http_recording_spool_check(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    const char *dir = reinterpret_cast<const char *>(rmcf->spool_path.data);
    struct stat st;
    const char *where = dir;  // what statvfs looks at below
    std::string parent;
    if (::stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"recording_spool\" \"%s\" is not a directory", dir);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    } else if (errno == ENOENT) {
        try {
            parent = parent_of(dir);
        } catch (const std::exception &) {
            return static_cast<char *>(NGX_CONF_ERROR);
        }
        ngx_err_t err = ::stat(parent.c_str(), &st) != 0 ? ngx_errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
        if (err != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                               "\"recording_spool\" \"%s\" cannot be created: its parent \"%s\" is not "
                               "a directory that nginx can enter",
                               dir, parent.c_str());
            return static_cast<char *>(NGX_CONF_ERROR);
        }
        where = parent.c_str();
    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "\"recording_spool\" \"%s\" cannot be used", dir);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    struct statvfs fs;
    if (::statvfs(where, &fs) == 0 && (fs.f_flag & ST_RDONLY) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"recording_spool\" \"%s\" is on a read-only file system", dir);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    // One of nginx's own paths: ngx_create_paths() makes it at every start
    // and reload and gives it to the worker user (mode u+rwx), like
    // client_body_temp_path. A non-null data tells ngx_add_path() that no
    // temporary path may share the directory.
    auto *path = static_cast<ngx_path_t *>(ngx_pcalloc(cf->pool, sizeof(ngx_path_t)));
    if (path == nullptr) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    path->name = rmcf->spool_path;
    path->data = rmcf;
    path->conf_file = cf->conf_file->file.name.data;
    path->line = cf->conf_file->line;
    if (ngx_add_path(cf, &path) != NGX_OK) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}

namespace {

// The worker user's view of the spool, tried at start and by `nginx -t`,
// so that a spool nginx accepted can take a batch: a file made and removed
// in the directory, and the files a previous run left opened for writing.
// Logs what failed; false then.
bool probe_as_worker(ngx_log_t *log, ngx_uint_t level, const std::string &dir, const char *user) noexcept
{
    try {
        std::string probe = dir + "/.probe." + std::to_string(::getpid());
        int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd == -1) {
            ngx_log_error(level, log, ngx_errno,
                          "\"recording_spool\" \"%s\": the worker user \"%s\" cannot create files in it",
                          dir.c_str(), user);
            return false;
        }
        ::close(fd);
        ::unlink(probe.c_str());
        for (const char *name : {kSpoolName, kReplayLockName}) {
            std::string file = dir + "/" + name;
            fd = ::open(file.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
            if (fd == -1 && errno != ENOENT) {
                ngx_log_error(level, log, ngx_errno,
                              "\"recording_spool\": the worker user \"%s\" cannot open \"%s\" for writing", user,
                              file.c_str());
                return false;
            }
            if (fd != -1) {
                ::close(fd);
            }
        }
        return true;
    } catch (const std::exception &) {
        return false;
    }
}

// Files a previous run left (its workers made them 0600) go to this run's
// worker user, as ngx_create_paths() gave it the directory: after a change
// of `user`, or workers that once ran as root. O_NOFOLLOW: the directory
// is the worker user's, who must not make the master chown another file.
void give_files_to(ngx_log_t *log, const std::string &dir, ngx_uid_t uid) noexcept
{
    try {
        for (const char *name : {kSpoolName, kReplayLockName}) {
            std::string file = dir + "/" + name;
            int fd = ::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
            if (fd == -1) {
                continue;  // none yet, or not ours to touch: the probe says
            }
            struct stat st;
            if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid != uid &&
                ::fchown(fd, uid, static_cast<gid_t>(-1)) != 0) {
                ngx_log_error(NGX_LOG_ALERT, log, ngx_errno, "recording: spool: chown(\"%s\") failed", file.c_str());
            }
            ::close(fd);
        }
    } catch (const std::exception &) {
    }
}

}  // namespace

ngx_int_t ngx_http_recording_spool_init_module(ngx_cycle_t *cycle, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    if (rmcf->spool_path.len == 0) {
        return NGX_OK;
    }
    // At the first start and in `nginx -t` an unusable spool stops nginx;
    // a reload cannot be refused from here (init_module failing ends the
    // master), so it is logged as loudly and the old workers' spool goes on.
    bool first = ngx_is_init_cycle(cycle->old_cycle);
    ngx_uint_t level = first ? NGX_LOG_EMERG : NGX_LOG_ALERT;
    std::string dir;
    try {
        dir.assign(reinterpret_cast<const char *>(rmcf->spool_path.data), rmcf->spool_path.len);
    } catch (const std::exception &) {
        return NGX_ERROR;
    }
    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(ngx_get_conf(cycle->conf_ctx, ngx_core_module));
    bool as_other_user = ::geteuid() == 0 && ccf->user != static_cast<ngx_uid_t>(NGX_CONF_UNSET_UINT);
    bool usable;
    if (!as_other_user) {
        // The workers are this process's user.
        usable = probe_as_worker(cycle->log, level, dir, ccf->username != nullptr ? ccf->username : "(this user)");
    } else {
        give_files_to(cycle->log, dir, ccf->user);
        // The probe runs as the workers will, in a child that takes their
        // user and groups exactly as ngx_worker_process_init() does.
        pid_t pid = ::fork();
        if (pid == -1) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno, "recording: spool: fork() failed");
            return first ? NGX_ERROR : NGX_OK;
        }
        if (pid == 0) {
            bool dropped = ::setgid(ccf->group) == 0 && ::initgroups(ccf->username, ccf->group) == 0 &&
                           ::setuid(ccf->user) == 0;
            if (!dropped) {
                ngx_log_error(level, cycle->log, ngx_errno, "recording: spool: cannot take the worker user \"%s\"",
                              ccf->username);
            }
            _exit(dropped && probe_as_worker(cycle->log, level, dir, ccf->username) ? 0 : 1);
        }
        int status = 0;
        while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
        }
        usable = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    if (!usable && first) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

ngx_int_t ngx_http_recording_spool_init_process(ngx_cycle_t *cycle, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    if (rmcf->spool_path.len == 0) {
        return NGX_OK;
    }
    try {
        std::string dir(reinterpret_cast<const char *>(rmcf->spool_path.data), rmcf->spool_path.len);
        spool_path = dir + "/" + kSpoolName;
        lock_path = dir + "/" + kReplayLockName;
    } catch (const std::exception &) {
        return NGX_ERROR;
    }
    conf = rmcf;
    spool_log = cycle->log;
    exiting = false;
    scan_timer.handler = on_scan_timer;
    scan_timer.data = &ngx_http_recording_no_connection;
    scan_timer.log = cycle->log;
    scan_timer.cancelable = 1;  // never keeps a worker that is shutting down
    resume_timer.handler = on_resume;
    resume_timer.data = &ngx_http_recording_no_connection;
    resume_timer.log = cycle->log;
    resume_timer.cancelable = 1;
    // Records left by a crash or a stop are replayed soon after the start.
    ngx_add_timer(&scan_timer, 100);
    return NGX_OK;
}

void ngx_http_recording_spool_exit_process() noexcept
{
    if (conf == nullptr) {
        return;
    }
    exiting = true;
    if (scan_timer.timer_set) {
        ngx_del_timer(&scan_timer);
    }
    if (resume_timer.timer_set) {
        ngx_del_timer(&resume_timer);
    }
    close_writer();
    stop_replay();
    conf = nullptr;
}
