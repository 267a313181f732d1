cn_add_fuzz(ctl_args ${CMAKE_SOURCE_DIR}/tests/fuzz/ctl_args_fuzz.cc cn_ctl)
