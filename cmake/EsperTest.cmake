# esper_add_test(<name> SOURCES <files...> LIBS <targets...>)
# One Catch2 binary per folder (esper_<folder>_tests). ctest runs every test case except the
# hidden ones ([.slow], [.integration], [.bench]); a [gpu] case without a device is skipped
# (tests/support/skip.h) and its process exits 4, which ctest reports as "Skipped". Tests find
# their data relative to the binary or through a variable (tests/support/paths.h), never through a
# build-time path: esper_test_data copies it into <build>/share/esper, as the bundle lays it out.
include(CTest)
if(ESPER_BUILD_TESTS)
  include(Catch)
endif()

# The data tests read, laid out as in a bundle: share/esper/{examples,bench/quality,schemas}.
if(ESPER_BUILD_TESTS AND NOT TARGET esper_test_data)
  set(esper_share ${PROJECT_BINARY_DIR}/share/esper)
  add_custom_target(esper_test_data
    COMMAND ${CMAKE_COMMAND} -E copy_directory ${PROJECT_SOURCE_DIR}/examples ${esper_share}/examples
    COMMAND ${CMAKE_COMMAND} -E copy_directory ${PROJECT_SOURCE_DIR}/bench/quality
            ${esper_share}/bench/quality
    COMMAND ${CMAKE_COMMAND} -E copy_directory ${PROJECT_SOURCE_DIR}/schemas ${esper_share}/schemas
    COMMENT "esper: test data into ${esper_share}")
endif()

function(esper_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;EXTRA_SPEC" ${ARGN})
  add_executable(${name} ${PROJECT_SOURCE_DIR}/tests/catch_main.cpp ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE Catch2::Catch2 ${ARG_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  add_dependencies(${name} esper_test_data)
  esper_target_defaults(${name})
  catch_discover_tests(${name}
    TEST_SPEC ${ARG_EXTRA_SPEC}
    PROPERTIES SKIP_RETURN_CODE 4 TIMEOUT 600
    WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
endfunction()
