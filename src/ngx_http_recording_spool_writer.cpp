// Writes are plain write(2)s from the event loop: a record is in the page
// cache, safe from a crash of nginx, before the batch is answered; with
// `recording_spool_fsync on` it is on the device first, safe from a crash
// of the machine. A writer that finds the file it holds removed (no link
// left: the replayer took everything) starts a new one.

#include "ngx_http_recording_spool_writer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <string>

#include "ngx_http_recording_spool_state.h"
#include "ngx_http_recording_stats.h"
#include "spell.h"
#include "spool_format.h"

namespace {

namespace spool = recording::spool;

ngx_http_recording_spool_state_t &state = ngx_http_recording_spool_state;

struct {
    int fd = -1;
    recording::Spell full;     // logged once per spell
    recording::Spell failing;  // likewise
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
    writer.fd = ::open(state.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (writer.fd == -1) {
        ngx_log_error(NGX_LOG_ERR, state.log, ngx_errno, "recording: spool: open(\"%s\") failed", state.path.c_str());
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
            ngx_log_error(NGX_LOG_ERR, state.log, ngx_errno, "recording: spool: cannot lock \"%s\"",
                          state.path.c_str());
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

// Writes the record at `at`, the file's end, with the file locked. On a
// failure whatever part reached the file is cut off again, so the next
// record starts where this one did.
bool write_record(off_t at, std::string &prefix, std::string_view command)
{
    size_t size = prefix.size() + command.size();
    iovec iov[2] = {{prefix.data(), prefix.size()}, {const_cast<char *>(command.data()), command.size()}};
    bool written = write_all(writer.fd, iov, 2, size);
    if (written && state.conf->spool_fsync && fdatasync(writer.fd) != 0) {
        written = false;
    }
    if (!written) {
        if (writer.failing.begins()) {
            ngx_log_error(NGX_LOG_ERR, state.log, ngx_errno, "recording: spool: write to \"%s\" failed",
                          state.path.c_str());
        }
        if (ftruncate(writer.fd, at) != 0) {
            close_writer();
        }
    }
    return written;
}

}  // namespace

bool ngx_http_recording_spool_append(ngx_http_recording_redis_server_t *server, std::string_view key,
                                     uint32_t elements, std::string_view command) noexcept
{
    try {
        spool::Record record;
        record.server = ngx_http_recording_view(server->id);
        record.key = key;
        record.elements = elements;
        record.command = command;
        std::string prefix = spool::record_prefix(record);
        size_t size = prefix.size() + command.size();

        std::optional<FileLock> lock;
        off_t at = lock_for_append(lock);
        if (at == -1) {
            if (writer.failing.begins()) {
                ngx_log_error(NGX_LOG_ERR, state.log, ngx_errno, "recording: spool: cannot write to \"%s\"",
                              state.path.c_str());
            }
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_write_failures, elements);
            return false;
        }
        ngx_http_recording_spool_held();
        if (at + static_cast<off_t>(size) > state.conf->spool_max_size) {
            if (writer.full.begins()) {
                ngx_log_error(NGX_LOG_ERR, state.log, 0, "recording: spool: full (max_size=%O), refusing batches",
                              state.conf->spool_max_size);
            }
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_full_refusals, elements);
            return false;
        }
        writer.full.ends();

        if (!write_record(at, prefix, command)) {
            ngx_http_recording_count(&ngx_http_recording_stats_t::spool_write_failures, elements);
            return false;
        }
        writer.failing.ends();
        ngx_http_recording_spool_gauges(at + static_cast<off_t>(size));
        ngx_http_recording_count(&ngx_http_recording_stats_t::spooled_elements, elements);
        return true;
    } catch (const std::exception &) {
        return false;
    }
}

bool ngx_http_recording_spool_writer_can_take() noexcept
{
    return !writer.failing.on() && !(writer.full.on() && ngx_http_recording_spool_exists());
}

void ngx_http_recording_spool_writer_close() noexcept
{
    close_writer();
}
