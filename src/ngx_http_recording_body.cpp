// Reading the request body nginx collected, whether it kept it in memory or
// wrote it to a temporary file (bodies over client_body_buffer_size), and
// feeding it to the decoder piece by piece.

#include "ngx_http_recording_body.h"

namespace {

// Temporary-file bodies are read in pieces of this size; the file was just
// written, so these reads come from the page cache, as nginx's own do.
constexpr size_t kFileChunk = 64 * 1024;

}  // namespace

off_t ngx_http_recording_body_size(ngx_http_request_t *r)
{
    off_t size = 0;
    if (r->request_body == nullptr) {
        return 0;
    }
    for (ngx_chain_t *cl = r->request_body->bufs; cl != nullptr; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }
    return size;
}

ngx_int_t ngx_http_recording_decode_body(ngx_http_request_t *r, recording::BodyDecoder &decoder)
{
    ngx_http_request_body_t *rb = r->request_body;
    if (rb == nullptr) {
        return NGX_OK;
    }
    if (r->headers_in.content_length_n > 0) {
        decoder.expect_input(static_cast<size_t>(r->headers_in.content_length_n));
    }

    u_char *chunk = nullptr;
    for (ngx_chain_t *cl = rb->bufs; cl != nullptr; cl = cl->next) {
        ngx_buf_t *b = cl->buf;

        if (!b->in_file) {
            if (decoder.feed(b->pos, static_cast<size_t>(b->last - b->pos))
                != recording::DecodeStatus::ok)
            {
                return NGX_OK;
            }
            continue;
        }

        if (chunk == nullptr) {
            chunk = static_cast<u_char *>(ngx_palloc(r->pool, kFileChunk));
            if (chunk == nullptr) {
                return NGX_ERROR;
            }
        }
        for (off_t offset = b->file_pos; offset < b->file_last;) {
            size_t size = static_cast<size_t>(ngx_min(static_cast<off_t>(kFileChunk),
                                                      b->file_last - offset));
            ssize_t n = ngx_read_file(b->file, chunk, size, offset);
            if (n <= 0) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "recording: cannot read the body from \"%V\"", &b->file->name);
                return NGX_ERROR;
            }
            offset += n;
            if (decoder.feed(chunk, static_cast<size_t>(n)) != recording::DecodeStatus::ok) {
                return NGX_OK;
            }
        }
    }
    return NGX_OK;
}
