#include <gtest/gtest.h>

#include "sampling.h"
