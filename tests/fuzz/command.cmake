cn_add_fuzz(command_decode ${CMAKE_SOURCE_DIR}/tests/fuzz/command_decode_fuzz.cc cn_state
  CORPUS_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/command_decode)
cn_add_fuzz(ctl_parse ${CMAKE_SOURCE_DIR}/tests/fuzz/ctl_parse_fuzz.cc cn_fsd
  CORPUS_DIR ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/ctl_parse)
