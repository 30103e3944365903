/* A process tree whose memory the migrate tests know: it maps anonymous private regions, says
 * where they are, and waits to be killed. The tests write the bytes they expect into it with
 * process_vm_writev and read them back the way the engine does (ScanTreeMemory, the post-copy
 * pusher). C, and built without the sanitizers of the C++ presets: a sanitized process maps
 * terabytes of shadow memory that a scan of its address space would walk.
 *
 *   memory_holder FD N1 [N2 ...] [+ M1 [M2 ...]]
 *
 * Maps a region of N1 pages, one of N2 pages, ... (untouched: no page is present until written),
 * each followed by an unmapped page so that regions never merge. With "+", forks a child that
 * maps regions of M1, M2, ... pages. Each process writes one line to FD, "PID ADDR1 ADDR2 ...\n"
 * (hex addresses), then pauses. Each dies with its parent. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PAGE 4096UL

static void die_with_parent(pid_t parent) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(3);
}

/* Maps the regions named in argv[from..to) and writes this process's line to `fd`. */
static void map_and_report(int fd, char** argv, int from, int to) {
  char line[4096];
  int at = snprintf(line, sizeof line, "%d", (int)getpid());
  for (int i = from; i < to; ++i) {
    const unsigned long pages = strtoul(argv[i], NULL, 10);
    if (pages == 0) _exit(2);
    char* base = mmap(NULL, (pages + 1) * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) _exit(4);
    if (munmap(base + pages * PAGE, PAGE) != 0) _exit(4);
    at += snprintf(line + at, sizeof line - (size_t)at, " %lx", (unsigned long)base);
    if (at >= (int)sizeof line - 32) _exit(2);
  }
  line[at++] = '\n';
  if (write(fd, line, (size_t)at) != at) _exit(5);
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  die_with_parent(getppid());
  const int fd = atoi(argv[1]);
  int plus = argc;
  for (int i = 2; i < argc; ++i)
    if (strcmp(argv[i], "+") == 0) plus = i;
  if (plus < argc) {
    const pid_t me = getpid();
    const pid_t child = fork();
    if (child < 0) return 6;
    if (child == 0) {
      die_with_parent(me);
      map_and_report(fd, argv, plus + 1, argc);
      for (;;) pause();
    }
  }
  map_and_report(fd, argv, 2, plus);
  for (;;) pause();
}
