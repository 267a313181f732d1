// bench_reporter FIFO ID [stay]: the command the instance benchmark starts. It reports that it runs
// by writing "ID\n" to FIFO as the first thing it does, then exits, or with `stay` waits for
// SIGTERM (as PID 1 of a PID namespace it needs a handler to be stopped by one). Static and
// libc-only, so its own start-up adds as little as possible to what is measured.
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_term(int sig) {
  (void)sig;
  _exit(0);
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  int fd = open(argv[1], O_WRONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  char line[256];
  size_t n = strlen(argv[2]);
  if (n > sizeof line - 1) n = sizeof line - 1;
  memcpy(line, argv[2], n);
  line[n] = '\n';
  if (write(fd, line, n + 1) != (ssize_t)(n + 1)) return 1;  // one write <= PIPE_BUF: atomic
  close(fd);
  if (argc > 3 && strcmp(argv[3], "stay") == 0) {
    signal(SIGTERM, on_term);
    for (;;) pause();
  }
  return 0;
}
