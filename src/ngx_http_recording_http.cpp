// Answering over HTTP: the pieces of nginx's request API that the handler
// and the status and health pages share.

#include "ngx_http_recording_http.h"

ngx_int_t ngx_http_recording_open_page(ngx_http_request_t *r) noexcept
{
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }
    return ngx_http_discard_request_body(r);
}

ngx_int_t ngx_http_recording_send(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type,
                                  std::string_view body)
{
    r->headers_out.status = status;
    r->headers_out.content_type = ngx_http_recording_str(content_type);
    r->headers_out.content_type_len = content_type.size();
    r->headers_out.content_type_lowcase = nullptr;
    r->headers_out.content_length_n = static_cast<off_t>(body.size());

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    ngx_buf_t *b = static_cast<ngx_buf_t *>(ngx_calloc_buf(r->pool));
    if (b == nullptr) {
        return NGX_ERROR;
    }
    b->pos = (u_char *) body.data();
    b->last = b->pos + body.size();
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_table_elt_t *ngx_http_recording_find_header(ngx_http_request_t *r, std::string_view lowcase_name,
                                                ngx_uint_t *count)
{
    ngx_table_elt_t *found = nullptr;
    *count = 0;
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part != nullptr; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].key.len == lowcase_name.size()
                && ngx_strncasecmp(h[i].key.data, (u_char *) lowcase_name.data(), lowcase_name.size()) == 0)
            {
                if (found == nullptr) {
                    found = &h[i];
                }
                (*count)++;
            }
        }
    }
    return found;
}

bool ngx_http_recording_add_header(ngx_http_request_t *r, std::string_view key, ngx_str_t value)
{
    auto *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return false;
    }
    h->hash = 1;
    h->key.len = key.size();
    h->key.data = (u_char *) key.data();
    h->value = value;
    return true;
}

std::optional<std::string_view> ngx_http_recording_complex_value(ngx_http_request_t *r,
    ngx_http_complex_value_t *cv)
{
    ngx_str_t value;
    if (cv == nullptr || ngx_http_complex_value(r, cv, &value) != NGX_OK) {
        return std::nullopt;
    }
    return ngx_http_recording_view(value);
}
