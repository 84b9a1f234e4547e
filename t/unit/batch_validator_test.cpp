#include <gtest/gtest.h>

#include "batch_validator.h"
