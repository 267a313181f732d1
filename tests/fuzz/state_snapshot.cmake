cn_add_fuzz(state_snapshot ${CMAKE_SOURCE_DIR}/tests/fuzz/state_snapshot_fuzz.cc cn_state)
