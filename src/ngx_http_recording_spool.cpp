// The disk spool.
//
// Each worker appends to a file of its own, "<ms>-<pid>-<n>.spool" (so that
// names sort oldest first), holding an exclusive flock() on it while it
// writes: a file nobody holds is finished, left by a worker that rotated
// it, stopped or crashed. Every second (and at once after a file is done)
// a worker whose Redis answers looks for such files, oldest first, takes
// one by locking it, and replays its records into the same keys with
// several RPUSH in flight. The offset up to which records were
// acknowledged is kept in the file's header, so a replay cut short resumes
// there; when every record is acknowledged the file is removed. Since a
// file is locked and its name checked again before it is read, two workers
// never replay the same file, and a file removed meanwhile is not read.
//
// Writes are plain write(2)s from the event loop: a record is on its way
// to disk (in the page cache, safe from a crash of nginx) before the batch
// is answered; with `recording_spool_fsync on` it is also on the device
// (fdatasync) first, safe from a crash of the machine.

#include "ngx_http_recording_spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <new>
#include <string>
#include <vector>

#include <hiredis/hiredis.h>

#include "ngx_http_recording_stats.h"
#include "spool_format.h"

namespace {

namespace spool = recording::spool;

constexpr ngx_msec_t kScanInterval = 1000;
constexpr size_t kReplayWindow = 64;                       // records in flight
constexpr size_t kReplayWindowBytes = 16 * 1024 * 1024;
// Replay is no request's: its own timeouts, generous for large records.
constexpr RedisTimeouts kReplayTimeouts = {1000, 5000};

ngx_http_recording_main_conf_t *conf = nullptr;  // this cycle's, in a worker
ngx_log_t *spool_log = nullptr;

// --- Scanning ---------------------------------------------------------------

struct SpoolFile {
    std::string name;
    off_t size;
};

std::string path_of(std::string_view name)
{
    std::string path(reinterpret_cast<const char *>(conf->spool_path.data), conf->spool_path.len);
    path += '/';
    path.append(name);
    return path;
}

bool is_spool_name(const char *name)
{
    size_t len = std::strlen(name);
    return len > 6 && std::strcmp(name + len - 6, ".spool") == 0 && name[0] != '.';
}

// The directory's spool files, oldest first.
std::vector<SpoolFile> scan()
{
    std::vector<SpoolFile> files;
    std::string dir(reinterpret_cast<const char *>(conf->spool_path.data), conf->spool_path.len);
    DIR *d = opendir(dir.c_str());
    if (d == nullptr) {
        ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: opendir(\"%s\") failed", dir.c_str());
        return files;
    }
    while (dirent *entry = readdir(d)) {
        if (!is_spool_name(entry->d_name)) {
            continue;
        }
        struct stat st;
        if (stat(path_of(entry->d_name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
            files.push_back({entry->d_name, st.st_size});
        }
    }
    closedir(d);
    std::sort(files.begin(), files.end(), [](const SpoolFile &a, const SpoolFile &b) { return a.name < b.name; });
    return files;
}

// --- Writing ----------------------------------------------------------------

struct Writer {
    int fd = -1;
    std::string name;
    off_t size = 0;
    unsigned files_made = 0;

    // The spool's size as last seen, plus what this worker wrote since.
    off_t seen_total = 0;
    size_t seen_others = 0;  // files with records, but for our own
    ngx_msec_t seen_at = 0;
    bool scanned = false;
    bool full = false;  // logged once per spell
    bool failing = false;
} writer;

void close_writer()
{
    if (writer.fd != -1) {
        ::close(writer.fd);  // releases the lock: the file is finished
        writer.fd = -1;
    }
}

void note_scan(const std::vector<SpoolFile> &files)
{
    writer.seen_total = 0;
    writer.seen_others = 0;
    for (const SpoolFile &file : files) {
        writer.seen_total += file.size;
        if (file.size > static_cast<off_t>(spool::kFileHeaderSize) && !(writer.fd != -1 && file.name == writer.name)) {
            writer.seen_others++;
        }
    }
    writer.seen_at = ngx_current_msec;
    writer.scanned = true;
    if (ngx_http_recording_stats != nullptr) {
        ngx_http_recording_stats->spool_bytes = static_cast<ngx_atomic_uint_t>(writer.seen_total);
        ngx_http_recording_stats->spool_files = files.size();
    }
}

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

bool open_writer()
{
    char name[64];
    ngx_time_t *tp = ngx_timeofday();
    std::snprintf(name, sizeof(name), "%013llu-%010lu-%06u.spool",
                  static_cast<unsigned long long>(tp->sec) * 1000 + tp->msec,
                  static_cast<unsigned long>(ngx_pid), writer.files_made++);
    std::string path = path_of(name);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
        ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: open(\"%s\") failed", path.c_str());
        return false;
    }
    std::string header = spool::file_header();
    iovec iov = {header.data(), header.size()};
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || !write_all(fd, &iov, 1, header.size())) {
        ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: cannot start \"%s\"", path.c_str());
        ::close(fd);
        ::unlink(path.c_str());
        return false;
    }
    writer.fd = fd;
    writer.name = name;
    writer.size = static_cast<off_t>(header.size());
    writer.seen_total += writer.size;
    return true;
}

// --- Replaying --------------------------------------------------------------

class ReplayCall;

struct Replay {
    int fd = -1;
    std::string name;
    uint64_t next = 0;        // where the next record starts
    uint64_t acknowledged = 0;
    bool at_end = false;
    bool failed = false;
    unsigned generation = 0;  // of the file taken: late replies of another are ignored
    size_t bytes_in_flight = 0;
    // Records sent, in file order, and what Redis said of each.
    enum class State { waiting, taken, refused };
    struct Sent {
        uint64_t end;
        size_t size;
        uint32_t elements;
        State state;
    };
    std::deque<Sent> sent;
    std::string record;  // the one being read
} replay;

ngx_event_t scan_timer;
ngx_event_t resume_event;  // continues replaying from outside a Redis callback
bool exiting = false;

void pump() noexcept;
void schedule_resume() noexcept;

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

void close_replay()
{
    if (replay.fd != -1) {
        ::close(replay.fd);
        replay.fd = -1;
    }
    replay.sent.clear();
    replay.bytes_in_flight = 0;
}

// Puts a file that cannot be replayed aside, for the operator.
void set_aside(const std::string &name, const char *why)
{
    std::string from = path_of(name);
    std::string to = from + ".bad";
    ngx_log_error(NGX_LOG_ALERT, spool_log, 0, "recording: spool: \"%s\" %s, renamed to \"%s\"", from.c_str(), why,
                  to.c_str());
    if (::rename(from.c_str(), to.c_str()) != 0) {
        ngx_log_error(NGX_LOG_ALERT, spool_log, ngx_errno, "recording: spool: rename(\"%s\") failed", from.c_str());
    }
}

// Takes `file` to replay: false when another worker holds it, it is gone,
// or it cannot be read.
bool take(const SpoolFile &file)
{
    std::string path = path_of(file.name);
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        return false;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd);
        return false;
    }
    // Still the file of that name? Another worker may have finished and
    // removed it between our open() and flock().
    struct stat opened, named;
    if (fstat(fd, &opened) != 0 || stat(path.c_str(), &named) != 0 || opened.st_ino != named.st_ino
        || opened.st_dev != named.st_dev)
    {
        ::close(fd);
        return false;
    }
    char header[spool::kFileHeaderSize];
    ssize_t n = pread(fd, header, sizeof(header), 0);
    uint64_t replayed = 0;
    if (n != static_cast<ssize_t>(sizeof(header))
        || !spool::read_file_header(std::string_view(header, sizeof(header)), &replayed))
    {
        if (opened.st_size < static_cast<off_t>(spool::kFileHeaderSize)) {
            ::unlink(path.c_str());  // cut short before its first record
        } else {
            set_aside(file.name, "is not a spool file");
        }
        ::close(fd);
        return false;
    }
    replay.fd = fd;
    replay.name = file.name;
    replay.next = replayed;
    replay.acknowledged = replayed;
    replay.at_end = false;
    replay.failed = false;
    replay.generation++;
    ngx_log_error(NGX_LOG_NOTICE, spool_log, 0, "recording: spool: replaying \"%s\" from offset %uL",
                  path.c_str(), replayed);
    return true;
}

// Keeps the acknowledged offset in the file, so a replay cut short
// resumes after what Redis already has.
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
                          replay.name.c_str());
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
                    }
                    break;
                }
            }
            if (!ok) {
                replay.failed = true;  // the rest waits for a later try
            }
            note_acknowledged();
            schedule_resume();
        }
        delete this;
    }

private:
    uint64_t end_;
    unsigned generation_;
};

// Reads the next record into replay.record; false at the end (or a torn or
// damaged tail, which ends the file).
bool read_record(spool::Record *record)
{
    char header[spool::kRecordHeaderSize];
    ssize_t n = pread(replay.fd, header, sizeof(header), static_cast<off_t>(replay.next));
    if (n == 0) {
        return false;
    }
    size_t size = 0;
    if (n != static_cast<ssize_t>(sizeof(header))
        || spool::record_size(std::string_view(header, sizeof(header)), &size) != spool::ReadStatus::ok)
    {
        ngx_log_error(NGX_LOG_WARN, spool_log, 0, "recording: spool: \"%s\" ends with a damaged record at %uL",
                      replay.name.c_str(), replay.next);
        return false;
    }
    replay.record.resize(size);
    n = pread(replay.fd, replay.record.data(), size, static_cast<off_t>(replay.next));
    if (n != static_cast<ssize_t>(size) || spool::parse_record(replay.record, record) != spool::ReadStatus::ok) {
        // A record cut short by a crash was never answered: nothing lost.
        ngx_log_error(NGX_LOG_WARN, spool_log, 0, "recording: spool: \"%s\" ends with a damaged record at %uL",
                      replay.name.c_str(), replay.next);
        return false;
    }
    return true;
}

// Sends records while the window has room.
void send_more()
{
    if (exiting || ngx_exiting || ngx_terminate) {
        replay.failed = true;  // a worker shutting down starts no more
    }
    while (!replay.at_end && !replay.failed && replay.sent.size() < kReplayWindow
           && replay.bytes_in_flight < kReplayWindowBytes)
    {
        spool::Record record;
        if (!read_record(&record)) {
            replay.at_end = true;
            break;
        }
        ngx_http_recording_redis_server_t *server = server_by_id(record.server);
        if (server == nullptr) {
            ngx_log_error(NGX_LOG_ALERT, spool_log, 0,
                          "recording: spool: \"%s\" holds records for \"%*s\", which no \"recording_redis\" names",
                          replay.name.c_str(), record.server.size(), record.server.data());
            replay.failed = true;
            break;
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
}

// Finishes the file being replayed when nothing is in flight any more:
// removed when Redis has every record, else left for a later try.
bool finish_file()
{
    for (const Replay::Sent &sent : replay.sent) {
        if (sent.state == Replay::State::waiting) {
            return false;
        }
    }
    std::string path = path_of(replay.name);
    if (replay.at_end && !replay.failed && replay.sent.empty()) {
        if (::unlink(path.c_str()) != 0) {
            ngx_log_error(NGX_LOG_ALERT, spool_log, ngx_errno, "recording: spool: unlink(\"%s\") failed",
                          path.c_str());
        } else {
            ngx_log_error(NGX_LOG_NOTICE, spool_log, 0, "recording: spool: \"%s\" replayed", path.c_str());
        }
    }
    // Otherwise Redis stopped taking records: the file stays, unlocked,
    // its header telling how far it was replayed.
    close_replay();
    return true;
}

// Replays what the spool holds, one file at a time, oldest first.
void pump() noexcept
{
    try {
        if (replay.fd != -1) {
            send_more();
            if (!finish_file()) {
                return;  // replies will call again
            }
            if (replay.failed) {
                return;  // Redis is failing: the next scan tries again
            }
        }
        if (exiting) {
            return;
        }
        std::vector<SpoolFile> files = scan();
        note_scan(files);
        for (const SpoolFile &file : files) {
            if (writer.fd != -1 && file.name == writer.name) {
                if (writer.size <= static_cast<off_t>(spool::kFileHeaderSize)) {
                    continue;  // our own, still empty
                }
                close_writer();  // ours: finished now, new records go to a new file
            }
            if (take(file)) {
                send_more();
                if (finish_file() && !replay.failed) {
                    continue;  // an empty file: on to the next
                }
                return;
            }
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, spool_log, 0, "recording: spool: %s", e.what());
        close_replay();
    }
}

void on_resume(ngx_event_t *) noexcept
{
    pump();
}

void schedule_resume() noexcept
{
    if (!resume_event.posted) {
        ngx_post_event(&resume_event, &ngx_posted_events);
    }
}

void on_scan_timer(ngx_event_t *ev) noexcept
{
    if (exiting || ngx_exiting || ngx_quit || ngx_terminate) {
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
    return conf != nullptr && conf->spool_path.len != 0;
}

bool ngx_http_recording_spool_holds_records() noexcept
{
    if (!ngx_http_recording_spool_enabled()) {
        return false;
    }
    if (writer.fd != -1 && writer.size > static_cast<off_t>(spool::kFileHeaderSize)) {
        return true;
    }
    return replay.fd != -1 || writer.seen_others > 0;
}

bool ngx_http_recording_spool_write(ngx_http_recording_redis_server_t *server, std::string_view key,
                                    uint32_t elements, std::string_view command) noexcept
{
    try {
        if (!writer.scanned || ngx_current_msec - writer.seen_at >= kScanInterval) {
            note_scan(scan());
        }
        spool::Record record;
        record.server = {reinterpret_cast<const char *>(server->id.data), server->id.len};
        record.key = key;
        record.elements = elements;
        record.command = command;
        std::string prefix = spool::record_prefix(record);
        size_t size = prefix.size() + command.size();

        if (writer.seen_total + static_cast<off_t>(size) > conf->spool_max_size) {
            if (!writer.full) {
                ngx_log_error(NGX_LOG_ERR, spool_log, 0, "recording: spool: full (max_size=%O), refusing batches",
                              conf->spool_max_size);
                writer.full = true;
            }
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_full_refusals, elements);
            return false;
        }
        writer.full = false;
        if (writer.fd == -1 && !open_writer()) {
            return false;
        }
        iovec iov[2] = {{prefix.data(), prefix.size()}, {const_cast<char *>(command.data()), command.size()}};
        bool written = write_all(writer.fd, iov, 2, size);
        if (written && conf->spool_fsync && fdatasync(writer.fd) != 0) {
            written = false;
        }
        if (!written) {
            if (!writer.failing) {
                ngx_log_error(NGX_LOG_ERR, spool_log, ngx_errno, "recording: spool: write to \"%s\" failed",
                              writer.name.c_str());
            }
            writer.failing = true;
            // Whatever part reached the file is cut off again: the next
            // record must start where this one did.
            if (ftruncate(writer.fd, writer.size) != 0) {
                close_writer();
            }
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_write_failures);
            return false;
        }
        writer.failing = false;
        writer.size += static_cast<off_t>(size);
        writer.seen_total += static_cast<off_t>(size);
        ngx_http_recording_count(&ngx_http_recording_stats_t::spooled_elements, elements);
        return true;
    } catch (const std::exception &) {
        return false;
    }
}

char *ngx_http_recording_spool_check(ngx_conf_t *cf, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    ngx_file_info_t fi;
    if (ngx_file_info(rmcf->spool_path.data, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "\"recording_spool\" directory \"%V\" cannot be used",
                           &rmcf->spool_path);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (!ngx_is_dir(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"recording_spool\" \"%V\" is not a directory", &rmcf->spool_path);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}

ngx_int_t ngx_http_recording_spool_init_process(ngx_cycle_t *cycle, ngx_http_recording_main_conf_t *rmcf) noexcept
{
    if (rmcf->spool_path.len == 0) {
        return NGX_OK;
    }
    conf = rmcf;
    spool_log = cycle->log;
    scan_timer.handler = on_scan_timer;
    scan_timer.log = cycle->log;
    scan_timer.cancelable = 1;  // never keeps a worker that is shutting down
    resume_event.handler = on_resume;
    resume_event.log = cycle->log;
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
    if (resume_event.posted) {
        ngx_delete_posted_event(&resume_event);
    }
    close_writer();
    close_replay();
}
