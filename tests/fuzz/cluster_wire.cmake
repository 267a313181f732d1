cn_add_fuzz(cluster_wire ${CMAKE_SOURCE_DIR}/tests/fuzz/cluster_wire_fuzz.cc cn_cluster)
