// Helpers shared by the libFuzzer targets in t/fuzz/.
//
// Each target checks properties of the core's output; a violated property
// prints what went wrong and traps, so libFuzzer records a crash with the
// input that caused it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string_view>

namespace fuzz {

[[noreturn]] inline void fail(const char* file, int line, const char* what)
{
    std::fprintf(stderr, "\n%s:%d: property violated: %s\n", file, line, what);
    std::fflush(stderr);
    __builtin_trap();
}

// Unlike assert(), on whatever the build type.
#define FUZZ_CHECK(condition, what)                          \
    do {                                                     \
        if (!(condition)) {                                  \
            ::fuzz::fail(__FILE__, __LINE__, (what));        \
        }                                                    \
    } while (0)

// Well-formed UTF-8 as Unicode's Table 3-7 defines it (no overlong forms,
// no surrogates, nothing above U+10FFFF). Written independently of the
// core's own decoder, to check it.
inline bool is_valid_utf8(std::string_view s) noexcept
{
    size_t i = 0;
    const size_t n = s.size();
    while (i < n) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t length;
        unsigned min_code;
        unsigned code;
        if ((c & 0xE0) == 0xC0) {
            length = 2, min_code = 0x80, code = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            length = 3, min_code = 0x800, code = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            length = 4, min_code = 0x10000, code = c & 0x07;
        } else {
            return false;
        }
        if (n - i < length) {
            return false;
        }
        for (size_t k = 1; k < length; k++) {
            const unsigned char b = static_cast<unsigned char>(s[i + k]);
            if ((b & 0xC0) != 0x80) {
                return false;
            }
            code = (code << 6) | (b & 0x3F);
        }
        if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
            return false;
        }
        i += length;
    }
    return true;
}

// A deterministic pseudo-random sequence seeded from the input itself, so
// that a reproducer file replays exactly the same run.
class Rng {
public:
    // Different salts give independent sequences for the same input.
    Rng(const uint8_t* data, size_t size, uint64_t salt = 0) noexcept
    {
        uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
        for (size_t i = 0; i < size; i++) {
            h = (h ^ data[i]) * 0x100000001b3ULL;
        }
        state_ = h ^ size ^ (salt * 0xd1b54a32d192ed03ULL);
    }

    uint64_t next() noexcept  // splitmix64
    {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

    // Uniform enough in [0, bound]; bound must be small.
    size_t upto(size_t bound) noexcept { return static_cast<size_t>(next() % (bound + 1)); }

private:
    uint64_t state_;
};

}  // namespace fuzz
