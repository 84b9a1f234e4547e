#include "ngx_http_recording_spool_state.h"

#include <sys/stat.h>

#include "ngx_http_recording_stats.h"

ngx_http_recording_spool_state_t ngx_http_recording_spool_state = {nullptr, nullptr, {}, {}};

namespace {

struct {
    ngx_msec_t at = 0;
    bool checked = false;
    bool exists = false;
} presence;

}  // namespace

bool ngx_http_recording_spool_exists() noexcept
{
    if (!presence.checked || presence.at != ngx_current_msec) {
        struct stat st;
        presence.exists = ::stat(ngx_http_recording_spool_state.path.c_str(), &st) == 0;
        presence.at = ngx_current_msec;
        presence.checked = true;
    }
    return presence.exists;
}

void ngx_http_recording_spool_held() noexcept
{
    presence.exists = true;
}

void ngx_http_recording_spool_gone() noexcept
{
    presence.checked = false;
}

void ngx_http_recording_spool_gauges(off_t size) noexcept
{
    if (ngx_http_recording_stats != nullptr) {
        ngx_http_recording_stats->spool_bytes = static_cast<ngx_atomic_uint_t>(size);
        ngx_http_recording_stats->spool_files = size > 0 ? 1 : 0;
    }
}
