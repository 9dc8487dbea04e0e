// SPDX-License-Identifier: GPL-2.0
/*
 * thp_collapse_bench - time the C and the Rust THP collapse cores in one boot.
 *
 * Usage: thp_collapse_bench [-r ROUNDS] [-m MIB] [-k MIB] [-a CORE] [-f] [-S]
 *                           [-p USEC [-C]] [-d DIR [-F MIB]] [-W WORKLOAD]
 *                           [-g MIB]
 *
 * For each round it measures, on both cores:
 *   full       MADV_COLLAPSE of MIB MiB of fully populated base pages
 *   half       the same with every other page never touched (none PTEs)
 *   huge       MADV_COLLAPSE of the same range once it is PMD-mapped
 *   inplace    MADV_COLLAPSE of the same range once each PMD mapping is
 *              split (an mprotect() of one page, undone): PMD-sized folios
 *              mapped by PTEs, which the Rust core maps with the PMD where
 *              they are and the C core (as upstream) copies
 *   written    full, while a thread writes the PMD being collapsed, one
 *              page every WRITE_PERIOD_NS, in order, a counter in its first
 *              word; each write is checked once the call returned. The
 *              Rust core's early copy must copy the written pages again
 *              (the report gives how many, and the writes lost: none)
 *   remote     process_madvise(MADV_COLLAPSE) of another process's memory
 *   shmem      MADV_COLLAPSE of MIB MiB of a memfd, every page written
 *   file       MADV_COLLAPSE of a clean F MiB file in DIR (-d; on a
 *              filesystem with PMD-sized folios, XFS), every page read
 *              through a read-only shared mapping (default 64 MiB)
 *   khugepaged the daemon collapsing a K MiB region until it is all huge
 *              (-k 0: not measured)
 *   khugepaged-cpu  the same run, khugepaged's own CPU time (its
 *              /proc/PID/schedstat, with CONFIG_SCHED_INFO): without the
 *              waits for the daemon to wake up and this program's polling,
 *              which the guest's one CPU also runs; under -icount, its
 *              instructions
 *   floor      no collapse: a plain user-space memcpy() of 2 MiB between
 *              two populated buffers, timed in each side's turn, so the
 *              table shows how far each core is from the copy it cannot
 *              avoid (the c/floor and rust/floor columns)
 *
 * Then, on the Rust core alone, each process_madvise() flag against flags = 0
 * (-g MIB of memory per copy, default 64; -g 0: not measured), the two
 * sides taking turns as the cores do:
 *   order4     MADV_F_COLLAPSE_ORDER(4) of fully populated anonymous memory:
 *              32 folios of 64 KiB per 2 MiB, against one PMD-sized folio
 *   light      MADV_F_COLLAPSE_LIGHT under memory pressure: in a memory
 *              cgroup whose limit leaves 512 KiB of room before each call
 *              (no swap; clean page cache of a file in DIR to reclaim), so
 *              that the new huge page can only be charged by reclaiming.
 *              flags = 0 reclaims and collapses; LIGHT must fail at once
 *              with EAGAIN. The table gives the share of calls that
 *              collapsed and that failed with EAGAIN, and the pages each
 *              side's reclaim scanned in the cgroup (memory.stat pgscan)
 *              per call. A LIGHT call that collapses or fails otherwise
 *              than with EAGAIN ends the run, and so does an ORDER(4)
 *              round that did not make 32 folios per call.
 *
 * The cores take turns every BLOCK PMDs (C first, then Rust, then Rust, then
 * C, ...), so that a slow phase of the host (TCG) hits both alike; khugepaged,
 * which cannot be split, takes turns by round. There are two copies of each
 * workload, populated one after the other, and the cores swap copies block
 * by block too: each core collapses half of each copy, so that where the
 * copies' pages happen to lie in memory weighs on both alike.
 *
 * -a CORE runs both turns on CORE (an A/A calibration: the ratio then shows
 * what the method itself gives when both sides run the same code); -f keeps
 * each core on one copy of the workload (how the benchmark ran before it
 * swapped copies), to measure what the copy alone does to the ratio.
 *
 * -M makes that thread fault only, without the mincore() calls: a hold that
 * begins while it runs then stalls a fault, not a mincore() call, so the
 * fault figures show what the process's page faults wait for (the stall
 * column is not measured). The Rust core's switch under the page-table
 * locks (sysfs collapse/rust_switch "read" or "ptl") lets those faults
 * through where the VMA write lock ("vma", and the C core) holds them; with
 * "read" the mincore() calls go on too, the mmap lock held for read only.
 *
 * -S runs no mincore() or fault thread and traces nothing (no stall, fault
 * or write-hold figures): with the guest's clock counting instructions (QEMU
 * -icount), a call's time is then the work of the core alone, not that of
 * the other CPU too.
 *
 * -p USEC samples the kernel's instruction pointer every USEC microseconds of
 * the calling thread's CPU time during each MADV_COLLAPSE call (a task-clock
 * perf event per core, so no PMU is needed), and ends with the kernel
 * functions the samples fell in, per core ("PROF," lines): where the time of
 * each core goes. A kernel with high-resolution timers gives fine samples.
 * With -C the samples carry call chains too, and a sample taken as
 * interrupts came back on (in a spin_unlock_irq*()) is also counted for the
 * function that called the unlock ("PROFUNLOCK," lines); call chains cost
 * time in the sampled thread, so the totals grow with them.
 *
 * -W WORKLOAD times (and profiles) that workload only ("shmem", say); the
 * others are still set up, untimed, and the flag workloads (-g) are not run.
 *
 * MADV_COLLAPSE is timed per 2 MiB call. While it runs, a second thread calls
 * mincore() in a loop: mincore() needs the mmap lock for read, so its
 * longest stall during a call is the time the collapse held the mmap lock
 * for write. Every sample goes to stdout as a "CSV," line; a table of medians
 * and rust/c ratios ends the output.
 *
 * A second table gives what a collapse costs the process it works on:
 *   hold       the time the collapsing task (this program, or khugepaged)
 *              held an mmap lock for write during the call, measured
 *              directly from the mmap_lock tracepoints (write acquisitions
 *              that succeeded, to the matching release; trace_clock
 *              global), median per 2 MiB; "-" without tracefs
 *   fault      the latency of page faults in the collapsed VMA, outside the
 *              range being collapsed: the mincore() thread also faults one
 *              fresh page (never mapped before, or zapped since) of the
 *              VMA's tail in each turn of its loop, and a fault that began
 *              during a call counts for that call's core and workload:
 *              p50, p99, the largest, and how many took 100 us or more
 *              (full, half, huge and shmem; the others have no tail). A hold that begins during the
 *              thread's mincore() stalls that and not the fault after it.
 *
 * A third table splits the time of each MADV_COLLAPSE call of this program
 * (not process_madvise() or khugepaged) by where the calling thread spent
 * it, read before and after the call: on a CPU (its CPU-time clock),
 * runnable but waiting for one (another task ran there: the stall thread, a
 * kworker; /proc/thread-self/schedstat, CONFIG_SCHED_INFO), and the rest,
 * asleep in the kernel (a lock, a flush, a drain), medians per 2 MiB. With
 * the stall thread it tells a core's own work from the time the scheduler
 * gave to others; no rows without schedstat.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
/* process_madvise(MADV_COLLAPSE) flags (include/uapi/asm-generic/mman-common.h). */
#ifndef MADV_F_COLLAPSE_LIGHT
#define MADV_F_COLLAPSE_LIGHT 0x4
#endif
#ifndef MADV_F_COLLAPSE_ORDER
#define MADV_F_COLLAPSE_ORDER(n) ((n) << 8)
#endif

#define PMD_SZ (2UL << 20)
#define PAGE_SZ 4096UL
#define THP "/sys/kernel/mm/transparent_hugepage/"
#define MAX_SAMPLES 65536
/* PMDs one core collapses before the other takes its turn. */
#define BLOCK 8

enum workload {
	FULL, HALF, HUGE, INPLACE, WRITTEN, REMOTE, SHMEM, FILEMAP, KHUGEPAGED,
	KHUGEPAGED_CPU, FLOOR, NR_WORKLOADS
};

static const char *const wname[] = {
	"full", "half", "huge", "inplace", "written", "remote", "shmem", "file",
	"khugepaged", "khugepaged-cpu", "floor",
};

/* The never-touched tail of a workload's VMA that the fault latency uses. */
#define TAIL_PMDS 8

static const char *const cores[] = { "c", "rust" };
/* The core each side runs (-a: the same one on both). */
static int side_core[2] = { 0, 1 };
/* -f: each side stays on one copy of the workload. */
static int fixed_copies;
/* The only workload timed (-W), or -1 for all. */
static int only_workload = -1;

struct series {
	double ns[MAX_SAMPLES];
	double stall[MAX_SAMPLES];
	double hold[MAX_SAMPLES];	/* ns, or -1 without tracefs */
	int n;
};

static struct series results[2][NR_WORKLOADS];

/* Page fault latencies (ns) per core and workload, from the stall thread. */
#define MAX_FAULTS 262144
static struct {
	float ns[MAX_FAULTS];
	int n;
} faults[2][NR_WORKLOADS];

/*
 * Where the time of each MADV_COLLAPSE call of time_local() went, per core and
 * workload (ns): on a CPU and runnable waiting for one (schedstat).
 */
static struct {
	float cpu[MAX_SAMPLES];
	float wait[MAX_SAMPLES];
	float asleep[MAX_SAMPLES];
	int n;
} sched_split[2][NR_WORKLOADS];

static void die(const char *what)
{
	fprintf(stderr, "thp_collapse_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Ends the run for a result that is not what the benchmark measures. */
static void die_msg(const char *what)
{
	fprintf(stderr, "thp_collapse_bench: %s\n", what);
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void put(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");

	if (!f || fputs(val, f) == EOF || fclose(f) == EOF)
		die(path);
}

/* @nr PMD-aligned PMDs of private anonymous memory, without THPs yet. */
static char *map_pmds(size_t nr)
{
	size_t len = nr * PMD_SZ;
	char *p = mmap(NULL, len + PMD_SZ, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		die("mmap");
	a = (char *)(((uintptr_t)p + PMD_SZ - 1) & ~(PMD_SZ - 1));
	if (a > p)
		munmap(p, a - p);
	munmap(a + len, p + PMD_SZ - a);
	if (madvise(a, len, MADV_NOHUGEPAGE))
		die("madvise(MADV_NOHUGEPAGE)");
	return a;
}

static void populate(char *p, size_t len, size_t stride)
{
	size_t off;

	for (off = 0; off < len; off += stride)
		p[off] = (char)(off >> 12);
	if (madvise(p, len, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
}

/* A PMD-aligned shared mapping of @nr PMDs of @fd, with @prot. */
static char *map_fd(int fd, size_t nr, int prot)
{
	size_t len = nr * PMD_SZ;
	char *p = mmap(NULL, len + PMD_SZ, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		die("mmap");
	a = (char *)(((uintptr_t)p + PMD_SZ - 1) & ~(PMD_SZ - 1));
	if (mmap(a, len, prot, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
		die("mmap(fd)");
	if (a > p)
		munmap(p, a - p);
	munmap(a + len, p + PMD_SZ - a);
	return a;
}

/*
 * @nr PMDs of a new memfd, every page written (small folios: shmem_enabled
 * never), and a tail of TAIL_PMDS PMDs never written, in one mapping.
 */
static char *map_shmem(size_t nr)
{
	int fd = memfd_create("thp_collapse_bench", 0);
	size_t all = nr + TAIL_PMDS;
	char *p;

	if (fd < 0 || ftruncate(fd, all * PMD_SZ))
		die("memfd");
	p = map_fd(fd, all, PROT_READ | PROT_WRITE);
	close(fd);
	populate(p, nr * PMD_SZ, PAGE_SZ);
	if (madvise(p, all * PMD_SZ, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
	return p;
}

/* A new, empty, already unlinked file in @dir. */
static int temp_file(const char *dir)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/thp_collapse_bench.XXXXXX", dir);
	fd = mkstemp(path);
	if (fd < 0)
		die("mkstemp");
	unlink(path);
	return fd;
}

/*
 * @nr PMDs of a new, clean file in @dir written a page at a time (so in small
 * folios), mapped read-only and every page read.
 */
static char *map_file(const char *dir, size_t nr)
{
	char page[PAGE_SZ];
	size_t off;
	char *p;
	int fd = temp_file(dir);

	for (off = 0; off < nr * PMD_SZ; off += PAGE_SZ) {
		memset(page, (int)(off >> 12), sizeof(page));
		if (pwrite(fd, page, PAGE_SZ, off) != PAGE_SZ)
			die("pwrite");
	}
	if (fsync(fd))
		die("fsync");
	p = map_fd(fd, nr, PROT_READ);
	close(fd);
	/* Map every page with a read fault. */
	if (madvise(p, nr * PMD_SZ, MADV_POPULATE_READ))
		die("madvise(MADV_POPULATE_READ)");
	if (madvise(p, nr * PMD_SZ, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
	return p;
}

/*
 * The loop that measures how long the mmap lock is unavailable (mincore()),
 * and, in each turn, how long a page fault in the collapsed VMA takes: the
 * fault of one fresh page of the current workload's tail. One thread does
 * both, so that it takes no more of the guest's CPUs than the mincore()
 * loop alone did; a write-hold that begins during a mincore() call stalls
 * that call and not the fault after it, so the fault figures see the holds
 * of some calls only (the larger share, as a fault of a fresh page takes
 * longer than a mincore() call).
 */
static struct {
	char *probe;
	int fault_only;		/* -M: no mincore() calls */
	atomic_int stop;
	atomic_llong max_stall;	/* ns */
	atomic_long iterations;
	/* The tail to fault in, or NULL; set by fault_tail() only. */
	atomic_uintptr_t tail;
	size_t len, off;
	int shmem;		/* zapped with MADV_REMOVE (else DONTNEED) */
	/* core * NR_WORKLOADS + workload of the call under way, or -1 */
	atomic_int bucket;
} stall = { .bucket = -1 };

/* One fault on the next fresh page of @tail, counted for @bucket. */
static void fault_one(char *tail, int bucket)
{
	double t0, d;
	int core, w;

	if (stall.off >= stall.len) {
		/* Every page mapped: zap them, so that they fault afresh. */
		if (madvise(tail, stall.len, stall.shmem ? MADV_REMOVE : MADV_DONTNEED))
			die("madvise(zap the tail)");
		stall.off = 0;
	}
	t0 = now_ns();
	tail[stall.off] = 1;
	d = now_ns() - t0;
	stall.off += PAGE_SZ;
	if (bucket < 0)
		return;
	core = bucket / NR_WORKLOADS;
	w = bucket % NR_WORKLOADS;
	if (faults[core][w].n < MAX_FAULTS)
		faults[core][w].ns[faults[core][w].n++] = (float)d;
}

static void *stall_thread(void *arg)
{
	unsigned char vec;
	long long d, cur;
	double t0;
	char *tail;

	(void)arg;
	while (!atomic_load(&stall.stop)) {
		t0 = now_ns();
		if (!stall.fault_only && mincore(stall.probe, PAGE_SZ, &vec))
			break;
		d = (long long)(now_ns() - t0);
		cur = atomic_load(&stall.max_stall);
		while (d > cur && !atomic_compare_exchange_weak(&stall.max_stall, &cur, d))
			;
		tail = (char *)atomic_load(&stall.tail);
		/* A fault that starts during a call counts for it. */
		if (tail)
			fault_one(tail, atomic_load(&stall.bucket));
		atomic_fetch_add(&stall.iterations, 1);
	}
	return NULL;
}

/* Waits until the stall thread has gone twice round its loop (if it runs). */
static void stall_settle(void)
{
	long it = atomic_load(&stall.iterations);

	while (!atomic_load(&stall.stop) && atomic_load(&stall.iterations) < it + 2)
		sched_yield();
}

/*
 * Makes the stall thread fault in [@tail, @tail + @len) (of a memfd with
 * @shmem), or in nothing (NULL); returns once it has stopped using the old
 * tail, which may then be unmapped.
 */
static void fault_tail(char *tail, size_t len, int shmem)
{
	atomic_store(&stall.tail, 0);
	stall_settle();
	stall.len = len;
	stall.off = 0;
	stall.shmem = shmem;
	atomic_store(&stall.tail, (uintptr_t)tail);
}

/* The faults from here on count for workload @w of @core (-1: for none). */
static void fault_count(int core, enum workload w)
{
	atomic_store(&stall.bucket, core < 0 ? -1 : core * NR_WORKLOADS + (int)w);
}

/*
 * The longest stall since the last reset. A mincore() that was blocked by
 * the collapse may record its wait only after the collapse returned: wait
 * for two more iterations of the loop, so that it is counted.
 */
static double settled_stall(void)
{
	if (atomic_load(&stall.stop))
		return 0;
	stall_settle();
	return atomic_load(&stall.max_stall);
}

/* ---- The mmap write-hold, from the mmap_lock tracepoints ---------------- */

#define TRACEFS "/sys/kernel/tracing/"
#define MMAP_LOCK_EVENTS TRACEFS "events/mmap_lock/"

/* Whether the mmap_lock events are on (tracefs and CONFIG_TRACING). */
static int hold_on;
/* Whether hold_open() turned them on (they were off). */
static int hold_enabled_here;

/* Writes @val to @path, or returns -1. */
static int try_put(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -1;
	if (fputs(val, f) == EOF) {
		fclose(f);
		return -1;
	}
	return fclose(f) == EOF ? -1 : 0;
}

/* Whether the event file @path reads "1". */
static int event_enabled(const char *path)
{
	char buf[8] = "";
	FILE *f = fopen(path, "r");

	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return buf[0] == '1';
}

/*
 * Traces the acquisitions (that succeeded: for write, and for read, which
 * a downgrade also reports) and write releases of the mmap lock by the
 * task @pid only. A filter, not set_event_pid: a filter is swapped in under
 * RCU, whereas set_event_pid registers scheduler probes, which patches
 * kernel text (see hold_open()).
 */
static void hold_trace(int pid)
{
	char f[96];

	snprintf(f, sizeof(f), "success == 1 && common_pid == %d", pid);
	put(MMAP_LOCK_EVENTS "mmap_lock_acquire_returned/filter", f);
	snprintf(f, sizeof(f), "write == 1 && common_pid == %d", pid);
	put(MMAP_LOCK_EVENTS "mmap_lock_released/filter", f);
}

/*
 * Turns the mmap_lock events on, for this program's thread that collapses,
 * before any other thread of this program starts, and leaves them on to the
 * end (hold_close(), after the join): turning a tracepoint on or off
 * rewrites its static branches through int3 breakpoints, and under QEMU's
 * multi-threaded TCG a vCPU running that code in a loop (the mincore()
 * thread, in mmap_read_lock()) took the int3 after the patch had completed
 * ("Oops: int3" in __mmap_lock_do_trace_acquire_returned(), 2026-12-04,
 * when this ran after the thread had started). Which task is traced is a
 * filter, for the same reason (hold_trace()).
 */
static void hold_open(void)
{
	if (access(TRACEFS "trace", F_OK))
		mount("nodev", TRACEFS, "tracefs", 0, NULL);
	if (access(MMAP_LOCK_EVENTS "enable", W_OK)) {
		printf("# no mmap_lock tracepoints (tracefs, CONFIG_TRACING): %s\n",
		       "no write-hold figures");
		return;
	}
	put(TRACEFS "tracing_on", "0");
	put(TRACEFS "trace_clock", "global");
	hold_trace(getpid());
	if (!event_enabled(MMAP_LOCK_EVENTS "mmap_lock_acquire_returned/enable") ||
	    !event_enabled(MMAP_LOCK_EVENTS "mmap_lock_released/enable")) {
		put(MMAP_LOCK_EVENTS "mmap_lock_acquire_returned/enable", "1");
		put(MMAP_LOCK_EVENTS "mmap_lock_released/enable", "1");
		hold_enabled_here = 1;
	}
	put(TRACEFS "trace", "");
	put(TRACEFS "tracing_on", "1");
	hold_on = 1;
}

/* The filters cleared, the buffer emptied, the events as they were found. */
static void hold_close(void)
{
	if (!hold_on)
		return;
	if (hold_enabled_here) {
		try_put(MMAP_LOCK_EVENTS "mmap_lock_acquire_returned/enable", "0");
		try_put(MMAP_LOCK_EVENTS "mmap_lock_released/enable", "0");
	}
	try_put(MMAP_LOCK_EVENTS "mmap_lock_acquire_returned/filter", "0");
	try_put(MMAP_LOCK_EVENTS "mmap_lock_released/filter", "0");
	try_put(TRACEFS "trace", "");
}

/* Empties the trace buffer: the next hold_ns() counts from here. */
static void hold_reset(void)
{
	if (hold_on)
		put(TRACEFS "trace", "");
}

/*
 * The ns the traced tasks held an mmap lock for write since hold_reset(),
 * from each write acquisition to the next write release or downgrade (a
 * read acquisition while the task holds it for write:
 * mmap_write_downgrade() reports one) by the same task; -1 without the
 * events. The trace lines read "<comm>-<pid> [cpu] <flags> <s.us>: <event>:
 * ... write=<true|false> ...".
 */
static double hold_ns(void)
{
	struct {
		long pid;
		double t;
	} acq[8];
	int nacq = 0, i;
	char line[512], *ev, *p;
	double sum = 0, t;
	long pid;
	FILE *f;

	if (!hold_on)
		return -1;
	f = fopen(TRACEFS "trace", "r");
	if (!f)
		die(TRACEFS "trace");
	while (fgets(line, sizeof(line), f)) {
		ev = strstr(line, ": mmap_lock_");
		p = strstr(line, " [");
		if (line[0] == '#' || !ev || !p || p > ev)
			continue;
		/* The pid: the digits before " [", after the comm's '-'. */
		while (p > line && p[-1] >= '0' && p[-1] <= '9')
			p--;
		pid = strtol(p, NULL, 10);
		/* The time stamp: the word before ": mmap_lock_". */
		for (p = ev; p > line && p[-1] != ' '; p--)
			;
		t = strtod(p, NULL) * 1e9;
		for (i = 0; i < nacq && acq[i].pid != pid; i++)
			;
		if (strstr(ev, "acquire_returned") && strstr(ev, "write=true")) {
			if (i == nacq && nacq < 8)
				nacq++;
			if (i < nacq)
				acq[i] = (typeof(acq[0])){ pid, t };
		} else if (i < nacq && acq[i].t >= 0) {
			/* A write release, or a downgrade (a read acquisition). */
			sum += t - acq[i].t;
			acq[i].t = -1;
		}
	}
	fclose(f);
	return sum;
}

/*
 * The -p profile: one task-clock sampling event per core, enabled only
 * around that core's calls, and the kernel's symbols to name the samples.
 */
#define PROF_PAGES 64		/* ring buffer data pages, a power of two */
#define MAX_SYMS 262144

struct ksym {
	unsigned long addr;
	char name[80];
	unsigned long samples[2];
	/* samples in a spin_unlock that this function called */
	unsigned long unlocks[2];
};

static struct {
	int fd[2];
	struct perf_event_mmap_page *ring[2];
	struct ksym *syms;
	int nsyms;
	unsigned long other[2];	/* samples outside every known symbol */
	int callers;		/* -C: record call chains too */
	uint64_t *ips[2];	/* every sample's instruction pointer */
	size_t nips[2];
} prof = { .fd = { -1, -1 } };

#define MAX_IPS 4194304

static int ksym_cmp(const void *a, const void *b)
{
	const struct ksym *x = a, *y = b;

	return (x->addr > y->addr) - (x->addr < y->addr);
}

/* Reads the kernel's text symbols, sorted by address. */
static void prof_load_syms(void)
{
	char line[256], type, name[80];
	unsigned long addr;
	FILE *f = fopen("/proc/kallsyms", "r");

	if (!f)
		die("/proc/kallsyms");
	prof.syms = calloc(MAX_SYMS, sizeof(*prof.syms));
	if (!prof.syms)
		die("calloc");
	while (fgets(line, sizeof(line), f) && prof.nsyms < MAX_SYMS) {
		if (sscanf(line, "%lx %c %79s", &addr, &type, name) != 3 || !addr)
			continue;
		if (type != 't' && type != 'T')
			continue;
		prof.syms[prof.nsyms].addr = addr;
		strcpy(prof.syms[prof.nsyms].name, name);
		prof.nsyms++;
	}
	fclose(f);
	if (!prof.nsyms) {
		errno = ENOENT;
		die("no kernel symbols (kptr_restrict?)");
	}
	qsort(prof.syms, prof.nsyms, sizeof(*prof.syms), ksym_cmp);
}

static void prof_open(unsigned long period_us)
{
	struct perf_event_attr attr = {
		.type = PERF_TYPE_SOFTWARE,
		.size = sizeof(attr),
		.config = PERF_COUNT_SW_TASK_CLOCK,
		.sample_period = period_us * 1000,
		.sample_type = PERF_SAMPLE_IP | (prof.callers ? PERF_SAMPLE_CALLCHAIN : 0),
		.disabled = 1,
		.exclude_user = 1,
		.exclude_hv = 1,
	};
	size_t len = (PROF_PAGES + 1) * PAGE_SZ;
	int k;

	prof_load_syms();
	for (k = 0; k < 2; k++) {
		prof.ips[k] = calloc(MAX_IPS, sizeof(uint64_t));
		if (!prof.ips[k])
			die("calloc");
		prof.fd[k] = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
		if (prof.fd[k] < 0)
			die("perf_event_open");
		prof.ring[k] = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
				    prof.fd[k], 0);
		if (prof.ring[k] == MAP_FAILED)
			die("mmap(perf ring)");
	}
}

/* The symbol that @ip falls in, or NULL. */
static struct ksym *prof_find(unsigned long ip)
{
	int lo = 0, hi = prof.nsyms - 1, mid;

	if (ip < prof.syms[0].addr)
		return NULL;
	while (lo < hi) {
		mid = (lo + hi + 1) / 2;
		if (prof.syms[mid].addr <= ip)
			lo = mid;
		else
			hi = mid - 1;
	}
	return &prof.syms[lo];
}

/* Moves the samples of @core's ring buffer into the histogram. */
static void prof_drain(int core)
{
	struct perf_event_mmap_page *m = prof.ring[core];
	char *data = (char *)m + PAGE_SZ;
	uint64_t head = __atomic_load_n(&m->data_head, __ATOMIC_ACQUIRE);
	uint64_t tail = m->data_tail, size = PROF_PAGES * PAGE_SZ;

	while (tail < head) {
		struct perf_event_header *h = (void *)(data + tail % size);

		if (h->type == PERF_RECORD_SAMPLE) {
			uint64_t *rec = (uint64_t *)(h + 1);
			uint64_t ip = rec[0], nr = prof.callers ? rec[1] : 0, j;
			struct ksym *s = prof_find(ip), *caller;

			if (s)
				s->samples[core]++;
			else
				prof.other[core]++;
			/*
			 * An interrupt that came while interrupts were off is
			 * taken when they are turned back on: such a sample
			 * lands in a spin_unlock_irq*(); count it for the
			 * function that called the unlock.
			 */
			for (j = 0; s && !strncmp(s->name, "_raw_spin_unlock_irq", 20) &&
			     j < nr && (void *)(rec + 2 + j) < (void *)((char *)h + h->size); j++) {
				if (rec[2 + j] >= (uint64_t)PERF_CONTEXT_MAX)
					continue;
				caller = prof_find(rec[2 + j]);
				if (caller && caller != s) {
					caller->unlocks[core]++;
					break;
				}
			}
			if (prof.nips[core] < MAX_IPS)
				prof.ips[core][prof.nips[core]++] = ip;
		}
		tail += h->size;
	}
	__atomic_store_n(&m->data_tail, tail, __ATOMIC_RELEASE);
}

static void prof_enable(int core, int on)
{
	if (prof.fd[core] < 0)
		return;
	if (ioctl(prof.fd[core], on ? PERF_EVENT_IOC_ENABLE : PERF_EVENT_IOC_DISABLE, 0))
		die("perf ioctl");
	if (!on)
		prof_drain(core);
}

/* The functions with at least @min samples on either core, most first. */
static int prof_cmp(const void *a, const void *b)
{
	const struct ksym *x = a, *y = b;
	unsigned long nx = x->samples[0] + x->samples[1];
	unsigned long ny = y->samples[0] + y->samples[1];

	return (ny > nx) - (ny < nx);
}

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* Instruction pointers with at least 3 samples on a core, in address order. */
static void prof_report_ips(void)
{
	size_t i[2] = { 0, 0 }, n[2];
	uint64_t ip;
	int k;

	for (k = 0; k < 2; k++)
		qsort(prof.ips[k], prof.nips[k], sizeof(uint64_t), u64_cmp);
	printf("PROFIP,ip,c_samples,rust_samples\n");
	while (i[0] < prof.nips[0] || i[1] < prof.nips[1]) {
		if (i[1] >= prof.nips[1] ||
		    (i[0] < prof.nips[0] && prof.ips[0][i[0]] < prof.ips[1][i[1]]))
			ip = prof.ips[0][i[0]];
		else
			ip = prof.ips[1][i[1]];
		for (k = 0; k < 2; k++)
			for (n[k] = 0; i[k] < prof.nips[k] && prof.ips[k][i[k]] == ip; i[k]++)
				n[k]++;
		if (n[0] >= 3 || n[1] >= 3)
			printf("PROFIP,%llx,%zu,%zu\n", (unsigned long long)ip, n[0], n[1]);
	}
}

static void prof_report(void)
{
	unsigned long total[2] = { prof.other[0], prof.other[1] };
	int i, k;

	if (prof.fd[0] < 0)
		return;
	for (i = 0; i < prof.nsyms; i++)
		for (k = 0; k < 2; k++)
			total[k] += prof.syms[i].samples[k];
	qsort(prof.syms, prof.nsyms, sizeof(*prof.syms), prof_cmp);
	printf("\nkernel samples during MADV_COLLAPSE: c %lu, rust %lu\n", total[0], total[1]);
	printf("PROF,function,c_samples,rust_samples\n");
	for (i = 0; i < prof.nsyms; i++) {
		struct ksym *s = &prof.syms[i];

		if (s->samples[0] + s->samples[1] < 5)
			break;
		printf("PROF,%s,%lu,%lu\n", s->name, s->samples[0], s->samples[1]);
	}
	printf("PROF,(unknown),%lu,%lu\n", prof.other[0], prof.other[1]);
	printf("PROFUNLOCK,caller,c_samples,rust_samples\n");
	for (i = 0; i < prof.nsyms; i++) {
		struct ksym *s = &prof.syms[i];

		if (s->unlocks[0] + s->unlocks[1] >= 3)
			printf("PROFUNLOCK,%s,%lu,%lu\n", s->name, s->unlocks[0], s->unlocks[1]);
	}
	prof_report_ips();
}

/* One sample: time @ns, stall @st, write-hold @hold (ns; -1: not measured). */
static void record(int core, enum workload w, int round, int i, double ns, double st,
		   double hold)
{
	struct series *s = &results[core][w];

	if (s->n < MAX_SAMPLES) {
		s->ns[s->n] = ns;
		s->stall[s->n] = st;
		s->hold[s->n] = hold;
		s->n++;
	}
	printf("CSV,%d,%s,%s,%d,%.0f,%.0f,0,%.0f\n", round, cores[core], wname[w], i, ns, st,
	       hold);
}

/* Selects the core that side @side runs. */
static void set_core(int side)
{
	put(THP "collapse/core", cores[side_core[side]]);
}

/* ---- The written workload ---------------------------------------------- */

/* The writer's pace: one page every WRITE_PERIOD_NS. */
#define WRITE_PERIOD_NS 10000

/* The path counters of the Rust core that the written workload reports. */
enum wr_path { WR_EARLY, WR_RECOPIED, WR_LOCKED, WR_RETRIES, WR_AGAIN, NR_WR_PATHS };

static const char *const wr_paths[NR_WR_PATHS] = {
	[WR_EARLY] = "copied_early",
	[WR_RECOPIED] = "recopied",
	[WR_LOCKED] = "copied_locked",
	[WR_RETRIES] = "early_retries",
	[WR_AGAIN] = "recopied_early",
};

static struct {
	pthread_t th;
	atomic_int busy;	/* the writer has written its first page */
	atomic_int stop;
	uint64_t gen;
	uint64_t last[PMD_SZ / PAGE_SZ];	/* 0: not written */
	long long writes[2], lost[2], calls[2];
	/* The Rust core's path counters over its written calls (wr_paths[]). */
	long long paths[NR_WR_PATHS];
} wr;

/*
 * Writes the target PMD once, page by page at the writer's pace, until it
 * is done or told to stop. Started for each call: no thread spins between
 * the calls, which would take a CPU from every other workload.
 */
static void *write_thread(void *arg)
{
	char *p = arg;
	double next = 0;
	size_t k;

	for (k = 0; k < PMD_SZ / PAGE_SZ && !atomic_load(&wr.stop); k++) {
		while (now_ns() < next && !atomic_load(&wr.stop))
			;
		next = now_ns() + WRITE_PERIOD_NS;
		wr.last[k] = ++wr.gen;
		__atomic_store_n((uint64_t *)(p + k * PAGE_SZ), wr.gen, __ATOMIC_RELAXED);
		if (!k)
			atomic_store(&wr.busy, 1);
	}
	return NULL;
}

/* The Rust core's MADV_COLLAPSE counter @name (rust_stats/madvise), or 0. */
static long long rust_madvise_stat(const char *name)
{
	FILE *f = fopen(THP "collapse/rust_stats/madvise", "r");
	long long v, ret = 0;
	char n[64];

	while (f && fscanf(f, "%63s %lld", n, &v) == 2)
		if (!strcmp(n, name))
			ret = v;
	if (f)
		fclose(f);
	return ret;
}

/* Starts writing the PMD at @p during the call that follows. */
static void written_start(char *p)
{
	memset(wr.last, 0, sizeof(wr.last));
	atomic_store(&wr.stop, 0);
	atomic_store(&wr.busy, 0);
	if (pthread_create(&wr.th, NULL, write_thread, p))
		die("pthread_create");
	/* The first write is in: the call starts with the writer at work. */
	while (!atomic_load(&wr.busy))
		sched_yield();
}

/* Stops the writer, and checks what it wrote into the PMD at @p. */
static void written_check(int core, char *p)
{
	size_t k;

	atomic_store(&wr.stop, 1);
	pthread_join(wr.th, NULL);
	for (k = 0; k < PMD_SZ / PAGE_SZ; k++) {
		if (!wr.last[k])
			continue;
		wr.writes[core]++;
		wr.lost[core] += *(uint64_t *)(p + k * PAGE_SZ) != wr.last[k];
	}
	wr.calls[core]++;
}

/*
 * The inplace workload's calls per core, and how many of them the Rust
 * core's in_place counter shows mapped in place (the C core always copies).
 */
static long long inplace_calls[2], inplace_done[2];

/* @n per call, over @calls calls (0 without calls). */
static double per_call(long long n, long long calls)
{
	return calls ? (double)n / calls : 0.0;
}

/*
 * The time the calling thread has spent runnable waiting for a CPU so far
 * (ns, the second field of /proc/thread-self/schedstat, which a switch back
 * to the thread ends); 1, or 0 if it cannot be read. The file is opened by
 * the thread that calls this first: time_local()'s, the main thread.
 */
static int sched_wait_now(double *wait)
{
	static int fd = -2;
	unsigned long long run, w;
	char buf[96];
	ssize_t n;

	if (fd == -2)
		fd = open("/proc/thread-self/schedstat", O_RDONLY);
	n = fd < 0 ? -1 : pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	if (sscanf(buf, "%llu %llu", &run, &w) != 2)
		return 0;
	*wait = w;
	return 1;
}

/*
 * The calling thread's time on a CPU so far (ns): its CPU-time clock, which
 * counts the running slice too, where schedstat's first field counts only
 * ended ones.
 */
static double thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts))
		return -1;
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/*
 * Adds the split of a call of @ns to those of @core and @w: @cpu on a CPU,
 * @wait runnable waiting for one, the rest asleep.
 */
static void sched_record(int core, enum workload w, double ns, double cpu, double wait)
{
	/* The clocks differ a little: a call that never slept may come out below 0. */
	double asleep = ns - cpu - wait > 0 ? ns - cpu - wait : 0;
	int n = sched_split[core][w].n;

	if (n >= MAX_SAMPLES)
		return;
	sched_split[core][w].cpu[n] = cpu;
	sched_split[core][w].wait[n] = wait;
	sched_split[core][w].asleep[n] = asleep;
	sched_split[core][w].n++;
}

/* MADV_COLLAPSE of PMDs [from, to) of @p, one call each. */
static void time_local(int core, enum workload w, int round, char *p, size_t from,
		       size_t to)
{
	long long before[NR_WR_PATHS] = { 0 }, in_place = 0;
	double t0, t1, c0, w0, c1, w1;
	size_t i, k;
	int split;

	for (i = from; i < to; i++) {
		hold_reset();
		atomic_store(&stall.max_stall, 0);
		fault_count(core, w);
		if (w == WRITTEN) {
			for (k = 0; k < NR_WR_PATHS; k++)
				before[k] = rust_madvise_stat(wr_paths[k]);
			written_start(p + i * PMD_SZ);
		}
		if (w == INPLACE)
			in_place = rust_madvise_stat("in_place");
		split = sched_wait_now(&w0);
		prof_enable(core, 1);
		/* The clocks next to each other, around the call only. */
		c0 = thread_cpu_ns();
		t0 = now_ns();
		if (madvise(p + i * PMD_SZ, PMD_SZ, MADV_COLLAPSE))
			die("madvise(MADV_COLLAPSE)");
		t1 = now_ns();
		c1 = thread_cpu_ns();
		prof_enable(core, 0);
		if (split && c0 >= 0 && c1 >= 0 && sched_wait_now(&w1))
			sched_record(core, w, t1 - t0, c1 - c0, w1 - w0);
		fault_count(-1, w);
		if (w == WRITTEN) {
			written_check(core, p + i * PMD_SZ);
			for (k = 0; k < NR_WR_PATHS; k++)
				wr.paths[k] += rust_madvise_stat(wr_paths[k]) - before[k];
		}
		if (w == INPLACE) {
			inplace_calls[core]++;
			inplace_done[core] += rust_madvise_stat("in_place") > in_place;
		}
		record(core, w, round, i, t1 - t0, settled_stall(), hold_ns());
	}
}

/* A process whose memory process_madvise() collapses. */
struct target {
	char *p;
	pid_t pid;
	int pidfd;
};

static void target_start(struct target *t, size_t nr)
{
	int fds[2];
	char c;

	t->p = map_pmds(nr);
	if (pipe(fds))
		die("pipe");
	t->pid = fork();
	if (t->pid < 0)
		die("fork");
	if (t->pid == 0) {
		populate(t->p, nr * PMD_SZ, PAGE_SZ);
		if (write(fds[1], "x", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	if (read(fds[0], &c, 1) != 1)
		die("child setup");
	close(fds[0]);
	close(fds[1]);
	t->pidfd = syscall(SYS_pidfd_open, t->pid, 0);
	if (t->pidfd < 0)
		die("pidfd_open");
}

static void target_stop(struct target *t, size_t nr)
{
	close(t->pidfd);
	kill(t->pid, SIGKILL);
	waitpid(t->pid, NULL, 0);
	munmap(t->p, nr * PMD_SZ);
}

/* process_madvise(MADV_COLLAPSE) of PMDs [from, to) of @t, one call each. */
static void time_remote(int core, int round, struct target *t, size_t from, size_t to)
{
	double t0, t1;
	size_t i;

	for (i = from; i < to; i++) {
		struct iovec iov = { .iov_base = t->p + i * PMD_SZ, .iov_len = PMD_SZ };

		hold_reset();
		t0 = now_ns();
		if (syscall(SYS_process_madvise, t->pidfd, &iov, 1, MADV_COLLAPSE, 0) < 0)
			die("process_madvise(MADV_COLLAPSE)");
		t1 = now_ns();
		record(core, REMOTE, round, i, t1 - t0, 0, hold_ns());
	}
}

/* kB of AnonHugePages in this process. */
static long anon_huge_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/smaps_rollup", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* The pid of the khugepaged thread, or 0. */
static int khugepaged_pid(void)
{
	char path[300], comm[32];
	DIR *d = opendir("/proc");
	struct dirent *e;
	int found = 0;
	FILE *f;

	while (d && !found && (e = readdir(d))) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strcmp(comm, "khugepaged\n"))
			found = atoi(e->d_name);
		fclose(f);
	}
	if (d)
		closedir(d);
	return found;
}

/* ns that task @pid has run on a CPU (/proc/PID/schedstat), or -1. */
static double task_cpu_ns(int pid)
{
	char path[64];
	double ns = -1;
	unsigned long long v;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
	f = fopen(path, "r");
	if (f && fscanf(f, "%llu", &v) == 1)
		ns = v;
	if (f)
		fclose(f);
	return ns;
}

static void time_khugepaged(int core, int round, size_t nr)
{
	char *p = map_pmds(nr);
	double t0, t1, c0, c1, hold;
	int polls = 0, pid;

	set_core(core);
	/* Starts the thread, which "never" stopped. */
	put(THP "enabled", "madvise");
	pid = khugepaged_pid();
	/*
	 * khugepaged's write-holds only (populate()'s MADV_HUGEPAGE takes
	 * this program's own), traced from before it can start collapsing.
	 */
	if (hold_on && pid)
		hold_trace(pid);
	hold_reset();
	populate(p, nr * PMD_SZ, PAGE_SZ);
	c0 = pid ? task_cpu_ns(pid) : -1;
	t0 = now_ns();
	while (anon_huge_kb() < (long)(nr * PMD_SZ / 1024)) {
		if (++polls > 600000)
			die("khugepaged did not finish");
		usleep(1000);
	}
	t1 = now_ns();
	c1 = pid ? task_cpu_ns(pid) : -1;
	put(THP "enabled", "never");
	hold = hold_on && pid ? hold_ns() / nr : -1;
	if (hold_on)
		hold_trace(getpid());
	record(core, KHUGEPAGED, round, 0, (t1 - t0) / nr, 0, hold);
	if (c0 >= 0 && c1 >= c0)
		record(core, KHUGEPAGED_CPU, round, 0, (c1 - c0) / nr, 0, -1);
	munmap(p, nr * PMD_SZ);
}

/*
 * The floor: a user-space memcpy() of 2 MiB between two populated buffers
 * of base pages, 2 * BLOCK times, each side's turn in turn.
 */
static void time_floor(int round)
{
	char *src = map_pmds(1), *dst = map_pmds(1);
	double t0, t1;
	int i;

	populate(src, PMD_SZ, PAGE_SZ);
	populate(dst, PMD_SZ, PAGE_SZ);
	for (i = 0; i < 2 * BLOCK; i++) {
		t0 = now_ns();
		memcpy(dst, src, PMD_SZ);
		t1 = now_ns();
		record((i + round) % 2, FLOOR, round, i, t1 - t0, 0, -1);
	}
	if (memcmp(dst, src, PMD_SZ))
		die_msg("the floor's copy differs");
	munmap(src, PMD_SZ);
	munmap(dst, PMD_SZ);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp);
	return n ? (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2) : 0;
}

static size_t min(size_t a, size_t b)
{
	return a < b ? a : b;
}

/*
 * Which core takes turn @k (0 or 1) of block @b (in PMDs) in @round: C then
 * Rust, or the other way round, alternating block by block and round by
 * round.
 */
static int turn_core(size_t b, int round, int k)
{
	return (int)((b / BLOCK + round + k) % 2);
}

/* The copy of the workload that @core collapses in block @b (in PMDs). */
static int turn_copy(size_t b, int core)
{
	return fixed_copies ? core : (int)((b / BLOCK + core) % 2);
}

/*
 * Workload @w of @round on PMDs [0, @nr), the cores taking turns block by
 * block, each on its copy of the workload for that block: mem[] for
 * MADV_COLLAPSE, t[] for process_madvise. With @tail, each copy of mem[]
 * has a tail of TAIL_PMDS never-touched PMDs in the same VMA after its @nr
 * (of a memfd with @shmem), where the fault thread faults during the turn
 * of that copy.
 */
static void take_turns(enum workload w, int round, size_t nr, char *mem[2],
		       struct target t[2], int tail, int shmem)
{
	size_t b, end;
	int k, core, copy;

	if (only_workload >= 0 && (int)w != only_workload)
		return;
	for (b = 0; b < nr; b += BLOCK) {
		end = min(b + BLOCK, nr);
		for (k = 0; k < 2; k++) {
			core = turn_core(b, round, k);
			copy = turn_copy(b, core);
			set_core(core);
			if (tail)
				fault_tail(mem[copy] + nr * PMD_SZ, TAIL_PMDS * PMD_SZ, shmem);
			if (w == REMOTE)
				time_remote(core, round, &t[copy], b, end);
			else
				time_local(core, w, round, mem[copy], b, end);
		}
	}
	fault_tail(NULL, 0, 0);
}

/*
 * @nr PMDs of anonymous memory populated every @stride bytes, and a tail
 * of TAIL_PMDS PMDs never touched, in one VMA (MADV_HUGEPAGE on the whole).
 */
static char *map_anon_tailed(size_t nr, size_t stride)
{
	char *p = map_pmds(nr + TAIL_PMDS);

	populate(p, nr * PMD_SZ, stride);
	if (madvise(p, (nr + TAIL_PMDS) * PMD_SZ, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
	return p;
}

/*
 * Splits the PMD mapping of each of the @nr PMDs at @p, keeping the folios:
 * an mprotect() of its first page, undone, leaves every page of the folio
 * mapped by a PTE. The full workload made them PMD-mapped; when it does not
 * run (-W inplace), they are collapsed here first, untimed, so that there is
 * a PMD-sized folio to split.
 */
static void split_pmd_mappings(char *p, size_t nr)
{
	size_t i;

	for (i = 0; i < nr; i++)
		if (only_workload == INPLACE &&
		    madvise(p + i * PMD_SZ, PMD_SZ, MADV_COLLAPSE))
			die("madvise(MADV_COLLAPSE) before inplace");
	for (i = 0; i < nr; i++)
		if (mprotect(p + i * PMD_SZ, PAGE_SZ, PROT_READ) ||
		    mprotect(p + i * PMD_SZ, PAGE_SZ, PROT_READ | PROT_WRITE))
			die("mprotect");
}

/* ---- The flags workloads (-g) ------------------------------------------ */

enum flag_workload { ORDER4, LIGHT, NR_FLAG_WORKLOADS };

static const char *const fwname[] = { "order4", "light" };
/* What side 1 passes; side 0 passes flags = 0. */
static const unsigned int fwflag[] = {
	MADV_F_COLLAPSE_ORDER(4), MADV_F_COLLAPSE_LIGHT,
};

/* The CSV "core" of each side. */
static const char *const fwside[NR_FLAG_WORKLOADS][2] = {
	{ "rust", "rust+order4" }, { "rust", "rust+light" },
};

/* Per side: every collapsing call's time and stall, and how the calls ended. */
struct flag_side {
	struct series s;
	long calls, ok, eagain;
	long long pgscan;	/* pages the calls scanned in the cgroup */
};

static struct flag_side fres[NR_FLAG_WORKLOADS][2];

static int self_pidfd;

#define CG_ROOT "/sys/fs/cgroup"
#define CG_DIR CG_ROOT "/thp_collapse_bench"

/* A field of the benchmark cgroup's flat-keyed @file (memory.stat, memory.events). */
static long long cg_stat(const char *file, const char *name)
{
	char key[64], path[128];
	long long v, found = -1;
	FILE *f;

	snprintf(path, sizeof(path), CG_DIR "/%s", file);
	f = fopen(path, "r");

	while (f && fscanf(f, "%63s %lld", key, &v) == 2)
		if (!strcmp(key, name))
			found = v;
	if (f)
		fclose(f);
	if (found < 0)
		die(path);
	return found;
}

/* Leaves 512 KiB of room in the benchmark cgroup: not enough for 2 MiB. */
static void cg_squeeze(void)
{
	char buf[32];
	long long cur;
	FILE *f = fopen(CG_DIR "/memory.current", "r");

	if (!f || fscanf(f, "%lld", &cur) != 1)
		die(CG_DIR "/memory.current");
	fclose(f);
	snprintf(buf, sizeof(buf), "%lld", cur + (512 << 10));
	put(CG_DIR "/memory.max", buf);
}

/* Moves this process (all its threads) into, or out of, the benchmark cgroup. */
static void cg_join(int in)
{
	char pid[16];

	snprintf(pid, sizeof(pid), "%d", getpid());
	if (in) {
		put(CG_ROOT "/cgroup.subtree_control", "+memory");
		if (mkdir(CG_DIR, 0755) && errno != EEXIST)
			die("mkdir " CG_DIR);
		/* One left by a run that died keeps its limit. */
		put(CG_DIR "/memory.max", "max");
		/* Anonymous memory stays: only the page cache can be reclaimed. */
		put(CG_DIR "/memory.swap.max", "0");
		put(CG_DIR "/cgroup.procs", pid);
	} else {
		put(CG_DIR "/memory.max", "max");
		put(CG_ROOT "/cgroup.procs", pid);
		if (rmdir(CG_DIR))
			die("rmdir " CG_DIR);
	}
}

/*
 * A file of @mib MiB in @dir, written (so in the page cache, charged to the
 * writer's cgroup) and synced: clean pages that reclaim may take.
 */
static int page_cache_file(const char *dir, size_t mib)
{
	static char chunk[1 << 20];
	int fd = temp_file(dir);
	size_t i;

	memset(chunk, 0x5a, sizeof(chunk));
	for (i = 0; i < mib; i++)
		if (pwrite(fd, chunk, sizeof(chunk), i << 20) != (ssize_t)sizeof(chunk))
			die("pwrite");
	if (fsync(fd))
		die("fsync");
	return fd;
}

/* A counter of hugepages-<kb>kB/stats/, or -1. */
static long long mthp_stat(int kb, const char *name)
{
	char path[128];
	long long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), THP "hugepages-%dkB/stats/%s", kb, name);
	f = fopen(path, "r");
	if (f && fscanf(f, "%lld", &v) != 1)
		v = -1;
	if (f)
		fclose(f);
	return v;
}

/*
 * process_madvise(MADV_COLLAPSE) of PMDs [from, to) of @p by side @side of
 * flag workload @w, one call each, through the caller's own pidfd.
 */
static void time_flag(enum flag_workload w, int side, int round, char *p, size_t from,
		      size_t to)
{
	unsigned int flags = side ? fwflag[w] : 0;
	struct flag_side *r = &fres[w][side];
	long long scan0 = 0;
	double t0, t1, st;
	size_t i;
	long ret;
	int err;

	for (i = from; i < to; i++) {
		struct iovec iov = { .iov_base = p + i * PMD_SZ, .iov_len = PMD_SZ };

		if (w == LIGHT) {
			cg_squeeze();
			scan0 = cg_stat("memory.stat", "pgscan");
		}
		hold_reset();
		atomic_store(&stall.max_stall, 0);
		t0 = now_ns();
		ret = syscall(SYS_process_madvise, self_pidfd, &iov, 1, MADV_COLLAPSE, flags);
		err = ret < 0 ? errno : 0;
		t1 = now_ns();
		/*
		 * Under pressure flags = 0 may fail (EBUSY: the charge failed,
		 * ENOMEM, EAGAIN); LIGHT must fail with EAGAIN; nothing else
		 * may fail.
		 */
		if (w == LIGHT && side && err != EAGAIN)
			die_msg(err ? "LIGHT failed, but not with EAGAIN" : "LIGHT collapsed");
		if (err && !(w == LIGHT && (err == EAGAIN || err == EBUSY || err == ENOMEM))) {
			errno = err;
			die(fwside[w][side]);
		}
		if (w == LIGHT)
			r->pgscan += cg_stat("memory.stat", "pgscan") - scan0;
		r->calls++;
		r->ok += !err;
		r->eagain += err == EAGAIN;
		st = settled_stall();
		printf("CSV,%d,%s,%s,%zu,%.0f,%.0f,%d,%.0f\n", round, fwside[w][side],
		       fwname[w], i, t1 - t0, st, err, hold_ns());
		/* The time of what each side is for: a collapse, or LIGHT's refusal. */
		if (r->s.n < MAX_SAMPLES && (!err || side)) {
			r->s.ns[r->s.n] = t1 - t0;
			r->s.stall[r->s.n] = st;
			r->s.n++;
		}
	}
}

/* Flag workload @w on PMDs [0, @nr) of mem[], the sides taking turns. */
static void flag_turns(enum flag_workload w, int round, size_t nr, char *mem[2])
{
	size_t b;
	int k, side;

	for (b = 0; b < nr; b += BLOCK)
		for (k = 0; k < 2; k++) {
			side = turn_core(b, round, k);
			time_flag(w, side, round, mem[turn_copy(b, side)], b, min(b + BLOCK, nr));
		}
}

/*
 * One round of the flag workloads, on @nr PMDs per copy; light only with a
 * directory (@dir) for its page cache.
 */
static void flag_round(int round, size_t nr, const char *dir)
{
	long long made = mthp_stat(64, "collapse_alloc");
	long calls = fres[ORDER4][1].calls;
	char *mem[2];
	int k, fd;

	put(THP "collapse/core", "rust");
	for (k = 0; k < 2; k++) {
		mem[k] = map_pmds(nr);
		populate(mem[k], nr * PMD_SZ, PAGE_SZ);
	}
	flag_turns(ORDER4, round, nr, mem);
	calls = fres[ORDER4][1].calls - calls;
	made = mthp_stat(64, "collapse_alloc") - made;
	printf("# order4 round %d: %lld folios of 64 KiB made by %ld ORDER(4) calls (32 each)\n",
	       round, made, calls);
	if (made != 32 * calls)
		die_msg("ORDER(4) calls did not make 32 folios of 64 KiB each");
	for (k = 0; k < 2; k++)
		munmap(mem[k], nr * PMD_SZ);
	if (!dir)
		return;

	cg_join(1);
	for (k = 0; k < 2; k++) {
		mem[k] = map_pmds(nr);
		populate(mem[k], nr * PMD_SZ, PAGE_SZ);
	}
	/* Enough to reclaim for every flags = 0 call, and some. */
	fd = page_cache_file(dir, 2 * nr * 2 + 16);
	flag_turns(LIGHT, round, nr, mem);
	for (k = 0; k < 2; k++)
		munmap(mem[k], nr * PMD_SZ);
	close(fd);
	cg_join(0);
}

/* The closing table of the flag workloads. */
static void flag_table(void)
{
	int w, k;

	printf("\n%-14s %10s %10s %10s %10s %10s %10s %7s %7s %7s %7s %9s %9s %10s %10s\n",
	       "workload", "flags0 med", "min", "max", "flag med", "min", "max", "flag/0",
	       "ok% f0", "ok% fl", "EAGAIN%", "pgscan f0", "pgscan fl", "stall f0", "stall fl");
	for (w = 0; w < NR_FLAG_WORKLOADS; w++) {
		struct flag_side *f = fres[w];
		double med[2], lo[2], hi[2], st[2];

		for (k = 0; k < 2; k++) {
			struct series *s = &f[k].s;

			st[k] = median(s->stall, s->n) / 1e3;
			med[k] = median(s->ns, s->n) / 1e3;
			lo[k] = s->n ? s->ns[0] / 1e3 : 0;
			hi[k] = s->n ? s->ns[s->n - 1] / 1e3 : 0;
		}
		if (!f[0].calls || !f[1].calls)
			continue;
		printf("%-14s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %7.3f %7.1f %7.1f ",
		       fwname[w], med[0], lo[0], hi[0], med[1], lo[1], hi[1],
		       med[0] > 0 ? med[1] / med[0] : 0,
		       100.0 * f[0].ok / f[0].calls, 100.0 * f[1].ok / f[1].calls);
		if (w == LIGHT)
			printf("%7.1f %9.1f %9.1f ", 100.0 * f[1].eagain / f[1].calls,
			       (double)f[0].pgscan / f[0].calls, (double)f[1].pgscan / f[1].calls);
		else
			printf("%7s %9s %9s ", "-", "-", "-");
		printf("%10.1f %10.1f\n", st[0], st[1]);
	}
	printf("(Rust core, process_madvise() per 2 MiB, us; fl: ORDER(4) or LIGHT, f0: flags 0;\n"
	       " times and stalls of the calls that collapsed, and of LIGHT's EAGAINs; ok%%: calls\n"
	       " that collapsed; EAGAIN%%: calls that failed with EAGAIN; pgscan: pages scanned in\n"
	       " the cgroup per call (memory.stat, folded in lazily: right as a total over the\n"
	       " calls, not per call); stall: median over calls of the longest mincore() wait\n"
	       " during the call, the longest stretch of the mmap lock write-hold time)\n");
}

/* One row of the closing table. */
static const char table_row[] =
	"%-14s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %7.2f %8.2f %12.1f %12.1f %7.2f %7.2f\n";

/* Prints @v (ns) in us in a column of @width, or "-" if @v < 0. */
static void print_us(int width, double v)
{
	if (v < 0)
		printf(" %*s", width, "-");
	else
		printf(" %*.1f", width, v / 1e3);
}

/* The median write-hold of @s in ns, or -1 if a sample was not measured. */
static double median_hold(struct series *s)
{
	int i;

	for (i = 0; i < s->n; i++)
		if (s->hold[i] < 0)
			return -1;
	return s->n ? median(s->hold, s->n) : -1;
}

static int float_cmp(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x > y) - (x < y);
}

/*
 * The second table: per workload and core, the median write-hold per 2 MiB
 * and the page fault latencies in the collapsed VMA during the calls.
 */
/* A fault this long (ns) waited for something: the "slow" column. */
#define SLOW_FAULT_NS 100000

static void stall_table(void)
{
	int w, k;

	printf("\n%-14s %10s %10s %7s %9s %9s %9s %6s %9s %9s %9s %6s %7s\n", "workload",
	       "c hold us", "rust hold", "r/c", "c flt p50", "c p99", "c max", "c slow",
	       "r flt p50", "r p99", "r max", "r slow", "faults");
	for (w = 0; w < NR_WORKLOADS; w++) {
		double hold[2];
		int n = 0;

		if (w == KHUGEPAGED_CPU || w == FLOOR)
			continue;
		printf("%-14s", wname[w]);
		for (k = 0; k < 2; k++) {
			hold[k] = median_hold(&results[k][w]);
			print_us(10, hold[k]);
		}
		if (hold[0] > 0 && hold[1] >= 0)
			printf(" %7.2f", hold[1] / hold[0]);
		else
			printf(" %7s", "-");
		for (k = 0; k < 2; k++) {
			float *v = faults[k][w].ns;
			int m = faults[k][w].n;

			int slow = 0, i;

			n += m;
			qsort(v, m, sizeof(*v), float_cmp);
			for (i = 0; i < m; i++)
				slow += v[i] >= SLOW_FAULT_NS;
			print_us(9, m ? v[m / 2] : -1);
			print_us(9, m ? v[(int)(m * 0.99)] : -1);
			print_us(9, m ? v[m - 1] : -1);
			if (m)
				printf(" %6d", slow);
			else
				printf(" %6s", "-");
		}
		printf(" %7d\n", n);
	}
	printf("(hold: median over calls of the time the collapsing task held an mmap\n"
	       " lock for write, from the mmap_lock tracepoints, per 2 MiB; flt: page\n"
	       " faults in the tail of the collapsed VMA begun during the calls, us;\n"
	       " slow: how many of them took 100 us or more; faults: how many, both\n"
	       " cores)\n");
}

/* The median of the @n values of @v (sorted in place), or -1 if none. */
static double float_median(float *v, int n)
{
	qsort(v, n, sizeof(*v), float_cmp);
	return n ? v[n / 2] : -1;
}

/* The third table: where the time of the calls went (sched_split). */
static void sched_table(void)
{
	int w, k;

	printf("\n%-14s %10s %10s %10s %10s %10s %10s\n", "workload", "c cpu us", "c wait",
	       "c asleep", "rust cpu", "rust wait", "rust asleep");
	for (w = 0; w < NR_WORKLOADS; w++) {
		if (!sched_split[0][w].n && !sched_split[1][w].n)
			continue;
		printf("%-14s", wname[w]);
		for (k = 0; k < 2; k++) {
			int n = sched_split[k][w].n;

			print_us(10, float_median(sched_split[k][w].cpu, n));
			print_us(10, float_median(sched_split[k][w].wait, n));
			print_us(10, float_median(sched_split[k][w].asleep, n));
		}
		printf("\n");
	}
	printf("(the MADV_COLLAPSE calls' time, medians per 2 MiB: on a CPU, runnable\n"
	       " waiting for one, and the rest, asleep; from the thread's CPU-time clock\n"
	       " and schedstat)\n");
}

int main(int argc, char **argv)
{
	int rounds = 3, opt, round, k, w;
	size_t mib = 256, kmib = 32, nr;
	pthread_t th;
	double floor_us;

	unsigned long prof_us = 0;

	int no_stall = 0;
	const char *dir = NULL;
	size_t fmib = 64, fnr;
	/* The flag workloads' MiB per copy: none with -W (another workload). */
	size_t gmib = 64;

	while ((opt = getopt(argc, argv, "r:m:k:a:fp:CMSd:F:W:g:")) != -1) {
		switch (opt) {
		case 'r':
			rounds = atoi(optarg);
			break;
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		case 'k':
			kmib = strtoul(optarg, NULL, 0);
			break;
		case 'a':
			side_core[0] = strcmp(optarg, "rust") == 0;
			side_core[1] = side_core[0];
			break;
		case 'f':
			fixed_copies = 1;
			break;
		case 'p':
			prof_us = strtoul(optarg, NULL, 0);
			break;
		case 'S':
			no_stall = 1;
			break;
		case 'M':
			stall.fault_only = 1;
			break;
		case 'C':
			prof.callers = 1;
			break;
		case 'd':
			dir = optarg;
			break;
		case 'F':
			fmib = strtoul(optarg, NULL, 0);
			break;
		case 'g':
			gmib = strtoul(optarg, NULL, 0);
			if (gmib == 1)
				die_msg("-g: 0 (none) or at least 2 MiB");
			break;
		case 'W':
			for (w = 0; w < NR_WORKLOADS; w++)
				if (!strcmp(optarg, wname[w]))
					only_workload = w;
			if (only_workload < 0)
				die("-W: no such workload");
			break;
		default:
			fprintf(stderr, "usage: %s [-r rounds] [-m MiB] [-k MiB] %s\n", argv[0],
				"[-a c|rust] [-f] [-M|-S] [-p usec [-C]] [-d dir [-F MiB]] [-W workload] [-g MiB]");
			return 2;
		}
	}
	nr = mib / 2;
	fnr = fmib / 2;
	if (!nr || rounds < 1)
		return 2;
	if (prof_us)
		prof_open(prof_us);
	if (only_workload >= 0)
		gmib = 0;
	self_pidfd = syscall(SYS_pidfd_open, getpid(), 0);
	if (self_pidfd < 0)
		die("pidfd_open");

	/* khugepaged only where this program asks for it, and at full speed. */
	put(THP "enabled", "never");
	put(THP "khugepaged/scan_sleep_millisecs", "0");
	put(THP "khugepaged/alloc_sleep_millisecs", "0");
	put(THP "khugepaged/pages_to_scan", "32768");

	/* -S: no thread, nor the tracepoints, in the calls' way. */
	if (!no_stall)
		hold_open();
	stall.probe = map_pmds(1);
	stall.probe[0] = 1;
	if (no_stall)
		stall.stop = 1;
	else if (pthread_create(&th, NULL, stall_thread, NULL))
		die("pthread_create");

	if (side_core[0] == side_core[1])
		printf("# A/A calibration: both sides run the %s core (%s)\n",
		       cores[side_core[0]], "\"c\" goes first in block 0, \"rust\" second");
	if (fixed_copies)
		printf("# each side keeps one copy of the workload (-f)\n");
	printf("CSV,round,core,workload,index,ns_per_2MiB,mmap_write_stall_ns,errno,%s\n",
	       "mmap_write_hold_ns");
	for (round = 0; round < rounds; round++) {
		char *full[2], *half[2];
		struct target t[2];

		for (k = 0; k < 2; k++)
			full[k] = map_anon_tailed(nr, PAGE_SZ);
		take_turns(FULL, round, nr, full, NULL, 1, 0);
		take_turns(HUGE, round, nr, full, NULL, 1, 0);
		for (k = 0; k < 2; k++)
			split_pmd_mappings(full[k], nr);
		take_turns(INPLACE, round, nr, full, NULL, 1, 0);
		for (k = 0; k < 2; k++) {
			munmap(full[k], (nr + TAIL_PMDS) * PMD_SZ);
			half[k] = map_anon_tailed(nr, 2 * PAGE_SZ);
		}
		take_turns(HALF, round, nr, half, NULL, 1, 0);
		for (k = 0; k < 2; k++) {
			munmap(half[k], (nr + TAIL_PMDS) * PMD_SZ);
			full[k] = map_anon_tailed(nr, PAGE_SZ);
		}
		take_turns(WRITTEN, round, nr, full, NULL, 1, 0);
		for (k = 0; k < 2; k++) {
			munmap(full[k], (nr + TAIL_PMDS) * PMD_SZ);
			target_start(&t[k], nr);
		}
		take_turns(REMOTE, round, nr, NULL, t, 0, 0);
		for (k = 0; k < 2; k++) {
			target_stop(&t[k], nr);
			full[k] = map_shmem(nr);
		}
		take_turns(SHMEM, round, nr, full, NULL, 1, 1);
		for (k = 0; k < 2; k++)
			munmap(full[k], (nr + TAIL_PMDS) * PMD_SZ);
		for (k = 0; dir && fnr && k < 2; k++)
			full[k] = map_file(dir, fnr);
		if (dir && fnr) {
			take_turns(FILEMAP, round, fnr, full, NULL, 0, 0);
			for (k = 0; k < 2; k++)
				munmap(full[k], fnr * PMD_SZ);
		}
		for (k = 0; kmib / 2 && k < 2; k++)
			time_khugepaged((round + k) % 2, round, kmib / 2);
		if (only_workload < 0 || only_workload == FLOOR)
			time_floor(round);
		if (gmib / 2)
			flag_round(round, gmib / 2, dir);
	}
	atomic_store(&stall.stop, 1);
	if (!no_stall)
		pthread_join(th, NULL);

	hold_close();

	floor_us = median(results[0][FLOOR].ns, results[0][FLOOR].n) / 1e3;
	printf("\n%-14s %10s %10s %10s %10s %10s %10s %7s %8s %12s %12s %7s %7s\n", "workload",
	       "c med us", "c min", "c max", "rust med", "rust min", "rust max",
	       "rust/c", "r/c p10", "c stall us", "rust stall", "c/floor", "r/floor");
	for (w = 0; w < NR_WORKLOADS; w++) {
		double med[2], lo[2], hi[2], p10[2], st[2];

		for (k = 0; k < 2; k++) {
			struct series *s = &results[k][w];

			/* median() sorts the samples. */
			med[k] = median(s->ns, s->n) / 1e3;
			lo[k] = s->n ? s->ns[0] / 1e3 : 0;
			hi[k] = s->n ? s->ns[s->n - 1] / 1e3 : 0;
			p10[k] = s->n ? s->ns[s->n / 10] / 1e3 : 0;
			st[k] = median(s->stall, s->n) / 1e3;
		}
		printf(table_row, wname[w], med[0], lo[0], hi[0], med[1], lo[1], hi[1],
		       med[0] > 0 ? med[1] / med[0] : 0,
		       p10[0] > 0 ? p10[1] / p10[0] : 0, st[0], st[1],
		       floor_us > 0 ? med[0] / floor_us : 0,
		       floor_us > 0 ? med[1] / floor_us : 0);
	}
	printf("(times per 2 MiB; r/c p10: the ratio of the 10th percentiles;\n"
	       " stall: median over calls of the longest mincore() wait during\n"
	       " the call; c/floor, r/floor: the median over the floor's, a\n"
	       " user-space copy of 2 MiB)\n");
	if (wr.calls[0] + wr.calls[1]) {
		printf("\nwritten: %lld c calls, %lld rust calls\n", wr.calls[0], wr.calls[1]);
		printf("written: writes checked c %lld, rust %lld; lost c %lld, rust %lld\n",
		       wr.writes[0], wr.writes[1], wr.lost[0], wr.lost[1]);
		printf("written: rust copied early %lld, copied locked %lld (the fallback)\n",
		       wr.paths[WR_EARLY], wr.paths[WR_LOCKED]);
		printf("written: rust retries %lld (%.2f a call) copying %lld pages again early",
		       wr.paths[WR_RETRIES], per_call(wr.paths[WR_RETRIES], wr.paths[WR_EARLY]),
		       wr.paths[WR_AGAIN]);
		printf(" (%.1f a call); %lld pages copied again under the lock (%.1f a call)\n",
		       per_call(wr.paths[WR_AGAIN], wr.paths[WR_EARLY]), wr.paths[WR_RECOPIED],
		       per_call(wr.paths[WR_RECOPIED], wr.paths[WR_EARLY]));
	}
	if (inplace_calls[0] + inplace_calls[1]) {
		printf("\ninplace: mapped in place (rust in_place moved) in %lld of %lld c calls,",
		       inplace_done[0], inplace_calls[0]);
		printf(" %lld of %lld rust calls\n", inplace_done[1], inplace_calls[1]);
	}
	stall_table();
	sched_table();
	if (gmib / 2)
		flag_table();
	prof_report();
	return 0;
}
