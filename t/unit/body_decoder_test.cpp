#include <gtest/gtest.h>

#include "body_decoder.h"
