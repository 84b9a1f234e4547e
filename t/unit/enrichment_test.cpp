#include <gtest/gtest.h>

#include "enrichment.h"
