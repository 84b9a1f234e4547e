// The site settings step: what `recording:site:<id>` says, from the shared
// cache (ngx_http_recording_site_cache), else from Redis, one HMGET per
// site and worker at a time (ngx_http_recording_site.cpp).
#pragma once

#include "ngx_http_recording_conf.h"

#include <string_view>

#include "site_settings.h"

enum class ngx_http_recording_site_answer_e {
    ready,        // `*settings` holds the answer
    unavailable,  // Redis cannot answer, and no earlier answer is known
    pending,      // the waiter's `site_found` will tell, from Redis's event
};

// Looks up the settings of `site_id` in the Redis of `conf`. While this
// worker fetches a site, later requests for it wait behind that fetch
// whatever the cache says, so that a session's batches reach Redis in the
// order they were accepted. When Redis cannot answer, the last answer the
// cache held is used. Throws std::bad_alloc, having taken nothing.
ngx_http_recording_site_answer_e ngx_http_recording_site_look_up(ngx_http_recording_loc_conf_t *conf,
    std::string_view site_id, ngx_http_recording_waiter_of_pt waiter_of, void *data,
    recording::SiteSettings *settings);
