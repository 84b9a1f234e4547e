#include <gtest/gtest.h>

#include "site_settings.h"
