cn_add_fuzz(dfs_chunk ${CMAKE_SOURCE_DIR}/tests/fuzz/dfs_chunk_fuzz.cc cn_dfs_chunks)
