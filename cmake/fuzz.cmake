# libFuzzer targets for the pure C++ core (t/fuzz/), built when
# -DRECORDING_BUILD_FUZZERS=ON. scripts/fuzz configures a build directory of
# its own with clang and builds only these targets:
#
#   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DRECORDING_BUILD_FUZZERS=ON \
#       -DRECORDING_BUILD_TESTS=OFF
#   cmake --build build-fuzz --target fuzz_decode fuzz_validate fuzz_enrich fuzz_websocket
#
# The core is compiled once more, into recording_core_fuzz, with coverage
# instrumentation and AddressSanitizer + UndefinedBehaviorSanitizer; the
# recording_core library the module links stays as it is.

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR
        "RECORDING_BUILD_FUZZERS needs clang (libFuzzer), but the C++ compiler is "
        "${CMAKE_CXX_COMPILER_ID}. Configure a separate build directory with "
        "CC=clang CXX=clang++, or run scripts/fuzz.")
endif()

# Any undefined behaviour stops the run like a crash (t/fuzz/ubsan-ignorelist.txt
# names the one check left out, in RapidJSON), and assertions stay on:
# RapidJSON's check how the validator drives its reader.
set(RECORDING_FUZZ_FLAGS
    -fsanitize=address,undefined -fno-sanitize-recover=all
    -fsanitize-ignorelist=${CMAKE_SOURCE_DIR}/t/fuzz/ubsan-ignorelist.txt
    -fno-omit-frame-pointer -g -UNDEBUG)

# The same sources as recording_core, whatever they become.
get_target_property(RECORDING_CORE_SOURCES recording_core SOURCES)
add_library(recording_core_fuzz STATIC ${RECORDING_CORE_SOURCES})
target_include_directories(recording_core_fuzz PUBLIC src/core)
target_include_directories(recording_core_fuzz SYSTEM PRIVATE ${RAPIDJSON_INCLUDE_DIR})
target_compile_options(recording_core_fuzz PRIVATE ${RECORDING_FUZZ_FLAGS} -fsanitize=fuzzer-no-link)
target_link_libraries(recording_core_fuzz PUBLIC ZLIB::ZLIB PkgConfig::LIBDEFLATE PkgConfig::SIMDJSON)

foreach(target fuzz_decode fuzz_validate fuzz_enrich fuzz_websocket)
    add_executable(${target} t/fuzz/${target}.cpp)
    target_include_directories(${target} SYSTEM PRIVATE ${RAPIDJSON_INCLUDE_DIR})
    target_compile_options(${target} PRIVATE ${RECORDING_FUZZ_FLAGS} -fsanitize=fuzzer)
    target_link_options(${target} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${target} PRIVATE recording_core_fuzz)
endforeach()
