# esper_add_test(<name> SOURCES <files...> LIBS <targets...>)
# One Catch2 binary per folder (esper_<folder>_tests). ctest runs every test case except the
# hidden ones ([.slow], [.integration], [.bench]); [gpu] cases skip with exit code 4 when
# no device exists, which ctest reports as "Skipped".
include(CTest)
if(ESPER_BUILD_TESTS)
  include(Catch)
endif()

function(esper_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;EXTRA_SPEC" ${ARGN})
  add_executable(${name} ${PROJECT_SOURCE_DIR}/tests/catch_main.cpp ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE Catch2::Catch2 ${ARG_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${name} PRIVATE
    ESPER_SOURCE_DIR="${PROJECT_SOURCE_DIR}" ESPER_BINARY_DIR="${PROJECT_BINARY_DIR}")
  esper_target_defaults(${name})
  catch_discover_tests(${name}
    TEST_SPEC ${ARG_EXTRA_SPEC}
    PROPERTIES SKIP_RETURN_CODE 4 TIMEOUT 600
    WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
endfunction()
