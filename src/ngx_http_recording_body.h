// Reading the body: feeds what nginx read (in memory or in a temporary
// file) to the decoder (ngx_http_recording_body.cpp).
#pragma once

#include "ngx_http_recording_nginx.h"

#include "body_decoder.h"

ngx_int_t ngx_http_recording_decode_body(ngx_http_request_t *r,
    recording::BodyDecoder &decoder);
off_t ngx_http_recording_body_size(ngx_http_request_t *r);
