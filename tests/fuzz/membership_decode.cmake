cn_add_fuzz(membership_decode ${CMAKE_SOURCE_DIR}/tests/fuzz/membership_decode_fuzz.cc cn_membership
            CORPUS_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/membership_decode)
