#include <gtest/gtest.h>

#include "outcome.h"
