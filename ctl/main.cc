// constellation: the command-line tool. Everything lives in cli.cc so tests can drive it.
#include "ctl/cli.h"

int main(int argc, char** argv) { return constellation::ctl::Main(argc, argv); }
