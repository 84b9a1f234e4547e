# Builds ngx_http_recording_module.so against an nginx source tree.
#
# nginx's headers include files that only ./configure generates
# (ngx_auto_config.h, ngx_auto_headers.h), and the module's signature must
# match the binary it loads into. So the tree is copied into the build
# directory and configured there with the flags Debian built its nginx with
# (nginx-dev ships them in conf_flags).

set(NGINX_BUILD_DIR ${CMAKE_BINARY_DIR}/nginx)
set(NGINX_OBJS_DIR ${NGINX_BUILD_DIR}/objs)

add_custom_command(
    OUTPUT ${NGINX_OBJS_DIR}/ngx_auto_config.h
    COMMAND ${CMAKE_COMMAND} -E rm -rf ${NGINX_BUILD_DIR}
    COMMAND ${CMAKE_COMMAND} -E copy_directory ${NGINX_SRC_DIR} ${NGINX_BUILD_DIR}
    COMMAND ${CMAKE_SOURCE_DIR}/scripts/configure-nginx-tree ${NGINX_BUILD_DIR}
    COMMENT "Configuring the nginx tree from ${NGINX_SRC_DIR}"
    VERBATIM
)
add_custom_target(nginx_headers DEPENDS ${NGINX_OBJS_DIR}/ngx_auto_config.h)

# nginx's build writes this list for every module; it is what the loader
# looks up in the .so.
set(MODULE_LIST ${CMAKE_BINARY_DIR}/ngx_http_recording_module_modules.c)
file(WRITE ${MODULE_LIST}.in [=[
#include <ngx_config.h>
#include <ngx_core.h>

extern ngx_module_t  ngx_http_recording_module;

ngx_module_t *ngx_modules[] = {
    &ngx_http_recording_module,
    NULL
};

char *ngx_module_names[] = {
    "ngx_http_recording_module",
    NULL
};

char *ngx_module_order[] = {
    NULL
};
]=])
configure_file(${MODULE_LIST}.in ${MODULE_LIST} COPYONLY)

add_library(ngx_http_recording_module MODULE
    ${RECORDING_GLUE_SOURCES}
    ${MODULE_LIST}
)
add_dependencies(ngx_http_recording_module nginx_headers)
set_target_properties(ngx_http_recording_module PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
target_include_directories(ngx_http_recording_module SYSTEM PRIVATE
    ${NGINX_BUILD_DIR}/src/core
    ${NGINX_BUILD_DIR}/src/event
    ${NGINX_BUILD_DIR}/src/event/modules
    ${NGINX_BUILD_DIR}/src/os/unix
    ${NGINX_BUILD_DIR}/src/http
    ${NGINX_BUILD_DIR}/src/http/modules
    ${NGINX_BUILD_DIR}/src/http/v2
    ${NGINX_OBJS_DIR}
)
target_include_directories(ngx_http_recording_module PRIVATE src)
target_link_libraries(ngx_http_recording_module PRIVATE recording_core PkgConfig::HIREDIS PkgConfig::OPENSSL)
# Only what nginx's loader needs leaves the .so.
target_link_options(ngx_http_recording_module PRIVATE
    -Wl,--version-script=${CMAKE_SOURCE_DIR}/src/ngx_http_recording_module.map
    -Wl,--no-undefined-version)
