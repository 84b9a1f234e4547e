#include <gtest/gtest.h>

#include "redis_protocol.h"
