// Shared Catch2 main for every esper_<folder>_tests binary.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
