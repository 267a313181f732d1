cn_add_fuzz(raft_decode ${CMAKE_SOURCE_DIR}/tests/fuzz/raft_decode_fuzz.cc cn_raft)
