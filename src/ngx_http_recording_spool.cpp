// The disk spool.
//
// One file, "recording.spool" in the spool directory, shared by every
// worker: records are appended in the order batches were taken, whichever
// worker took them, so replaying the file front to back keeps every
// session's order. Two actors work on it: the writer
// (ngx_http_recording_spool_writer.cpp) appends under the file's flock();
// the replayer (ngx_http_recording_spool_replay.cpp), one worker at a time,
// sends the records to Redis and removes the file once Redis has
// everything. The file's existence is what tells workers that records are
// waiting, and that new batches must go behind them.
//
// This file is the spool's face to the rest of the module: the checks of
// the configuration and of the directory, the start and the exit of a
// worker, and the entry points that set the actors to work.

#include "ngx_http_recording_spool.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "ngx_http_recording_spool_replay.h"
#include "ngx_http_recording_spool_state.h"
#include "ngx_http_recording_spool_writer.h"

namespace {

constexpr const char *kSpoolName = "recording.spool";
constexpr const char *kReplayLockName = "replay.lock";

ngx_http_recording_spool_state_t &state = ngx_http_recording_spool_state;

}  // namespace

bool ngx_http_recording_spool_enabled() noexcept
{
    return state.conf != nullptr;
}

bool ngx_http_recording_spool_holds_records() noexcept
{
    return state.conf != nullptr && ngx_http_recording_spool_exists();
}

bool ngx_http_recording_spool_has_room() noexcept
{
    return state.conf != nullptr && ngx_http_recording_spool_writer_can_take();
}

bool ngx_http_recording_spool_write(ngx_http_recording_redis_server_t *server, std::string_view key,
                                    uint32_t elements, std::string_view command) noexcept
{
    if (!ngx_http_recording_spool_append(server, key, elements, command)) {
        return false;
    }
    ngx_http_recording_spool_replay_soon();
    return true;
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
        dir = ngx_http_recording_view(rmcf->spool_path);
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
        std::string dir(ngx_http_recording_view(rmcf->spool_path));
        state.path = dir + "/" + kSpoolName;
        state.lock_path = dir + "/" + kReplayLockName;
    } catch (const std::exception &) {
        return NGX_ERROR;
    }
    state.conf = rmcf;
    state.log = cycle->log;
    ngx_http_recording_spool_replay_init(cycle->log);
    return NGX_OK;
}

void ngx_http_recording_spool_exit_process() noexcept
{
    if (state.conf == nullptr) {
        return;
    }
    ngx_http_recording_spool_replay_exit();
    ngx_http_recording_spool_writer_close();
    state.conf = nullptr;
}
