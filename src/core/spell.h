// A trouble that is logged once when it begins and once when it ends, however
// often it is met in between: "logged once per change of state". A worker
// that meets a dead Redis on every batch must not write a line per batch.
#pragma once

#include <utility>

namespace recording {

class Spell {
public:
    // Met the trouble: true only if it was not already on, so log it now.
    bool begins() noexcept { return !std::exchange(on_, true); }

    // The trouble is over: true only if it was on, so log the recovery now.
    bool ends() noexcept { return std::exchange(on_, false); }

    bool on() const noexcept { return on_; }

private:
    bool on_ = false;
};

}  // namespace recording
