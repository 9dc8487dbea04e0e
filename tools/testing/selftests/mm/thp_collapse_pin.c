// SPDX-License-Identifier: GPL-2.0
/*
 * MADV_COLLAPSE next to pinned pages, on the Rust and the C collapse cores:
 * a collapse must never move a page away from a pin, since whoever holds the
 * pin (a device, io_uring, an O_DIRECT read) keeps using the old page.
 *
 *   thp_collapse_pin [dir]	(dir: on XFS, default /mnt/xfs; run as root)
 *
 * Long-term pins: one page of a PMD range of anonymous memory, of a memfd
 * (shmem) and of a file in @dir is pinned, either through
 * /sys/kernel/debug/gup_test (PIN_LONGTERM_TEST_START, FOLL_LONGTERM) or by
 * registering it as an io_uring fixed buffer (also FOLL_LONGTERM). Then
 * MADV_COLLAPSE must fail with EAGAIN, leave the range PTE-mapped, and on
 * the Rust core move its page_count counter and not its succeed counter.
 * The pin and the mapping must still share the page: data written through
 * the mapping (and through pwrite(2) for shmem and the file) is read back
 * through the pin (PIN_LONGTERM_TEST_READ, or IORING_OP_WRITE_FIXED of the
 * buffer to a file), and data written through the pin (IORING_OP_READ_FIXED
 * from a file into the buffer) is read back through the mapping. After the
 * unpin, the collapse must succeed (Rust: succeed moved) with every byte
 * intact, which shows that the refusal was the pin's doing. A core that
 * collapsed a pinned page away from its pin fails each of these checks.
 *
 * GUP refuses a writable long-term pin of a file that needs dirty tracking
 * (writable_file_mapping_allowed(): a shared mapping of an XFS file), so
 * gup_test's FOLL_WRITE pin and io_uring's buffer registration (always
 * FOLL_WRITE | FOLL_LONGTERM) fail there with EFAULT; the program checks
 * that and pins the XFS page read-only, which GUP allows.
 *
 * O_DIRECT: a thread reads generation after generation of a page from an
 * XFS file with O_DIRECT into page k of the range (k cycling over the range;
 * the read pins page k for the I/O), and checks each one through the
 * mapping, while the main thread collapses and splits the range again and
 * again (anonymous memory and shmem). Every read must land, every page must
 * end with the last generation read into it, some reads must fall within a
 * collapse, and the collapse must succeed in at least half of the rounds.
 * The generations are written to the source file beforehand, page i of it
 * holding generation i + 2, so that each step of the loop is the O_DIRECT
 * read alone (a write and its writeback per read made the loop, and its
 * pins, several times longer under TCG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

/* The page of the range the pin holds. */
#define PIN_PG 301
/* Rounds of collapse and split against the O_DIRECT reader. */
#define DIO_ROUNDS 24
/* Reads at most, each of a new generation (pages of the source file). */
#define DIO_READS 1024
/* Tries of a split before a round counts it as failed. */
#define SPLIT_TRIES 20

static const char *const cores[] = { "rust", "c" };

/* The knobs collapse_test_start() saved, restored at any exit. */
static char orig_core[16], orig_enabled[32];

enum pin_kind { PIN_GUP, PIN_URING };
static const char *const pin_name[] = { "gup_test", "io_uring buffer" };

/* A small io_uring, driven through its system calls (no liburing). */
struct ring {
	int fd;
	unsigned int *sq_tail, *sq_mask, *sq_array;
	unsigned int *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
	void *sq_ptr, *cq_ptr;
	size_t sq_len, cq_len, sqes_len;
};

/* Sets up @rg with 4 entries; 0 or -1 (errno set). */
static int ring_init(struct ring *rg)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	memset(rg, 0, sizeof(*rg));
	rg->fd = syscall(__NR_io_uring_setup, 4, &p);
	if (rg->fd < 0)
		return -1;
	rg->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned int);
	rg->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	rg->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
	rg->sq_ptr = mmap(NULL, rg->sq_len, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_POPULATE, rg->fd, IORING_OFF_SQ_RING);
	rg->cq_ptr = mmap(NULL, rg->cq_len, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_POPULATE, rg->fd, IORING_OFF_CQ_RING);
	rg->sqes = mmap(NULL, rg->sqes_len, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_POPULATE, rg->fd, IORING_OFF_SQES);
	if (rg->sq_ptr == MAP_FAILED || rg->cq_ptr == MAP_FAILED ||
	    rg->sqes == MAP_FAILED)
		return -1;
	rg->sq_tail = rg->sq_ptr + p.sq_off.tail;
	rg->sq_mask = rg->sq_ptr + p.sq_off.ring_mask;
	rg->sq_array = rg->sq_ptr + p.sq_off.array;
	rg->cq_head = rg->cq_ptr + p.cq_off.head;
	rg->cq_tail = rg->cq_ptr + p.cq_off.tail;
	rg->cq_mask = rg->cq_ptr + p.cq_off.ring_mask;
	rg->cqes = rg->cq_ptr + p.cq_off.cqes;
	return 0;
}

static void ring_exit(struct ring *rg)
{
	munmap(rg->sqes, rg->sqes_len);
	munmap(rg->cq_ptr, rg->cq_len);
	munmap(rg->sq_ptr, rg->sq_len);
	close(rg->fd);
}

/*
 * Runs one @op (IORING_OP_READ_FIXED or _WRITE_FIXED) of a page between
 * fixed buffer 0 at @buf and @fd at offset 0, and waits for it. Returns the
 * completion's result (bytes or -errno).
 */
static int ring_rw_fixed(struct ring *rg, int op, int fd, void *buf)
{
	unsigned int tail = *rg->sq_tail, idx = tail & *rg->sq_mask, head;
	struct io_uring_sqe *sqe = &rg->sqes[idx];
	int res;

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = op;
	sqe->fd = fd;
	sqe->addr = (unsigned long)buf;
	sqe->len = PAGE_SZ;
	sqe->off = 0;
	sqe->buf_index = 0;
	rg->sq_array[idx] = idx;
	__atomic_store_n(rg->sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, rg->fd, 1, 1, IORING_ENTER_GETEVENTS,
		    NULL, 0) < 0)
		return -errno;
	head = *rg->cq_head;
	if (head == __atomic_load_n(rg->cq_tail, __ATOMIC_ACQUIRE))
		return -EIO;
	res = rg->cqes[head & *rg->cq_mask].res;
	__atomic_store_n(rg->cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

/* Registers the page at @p as fixed buffer 0 of @rg; 0 or -errno. */
static int ring_register(struct ring *rg, void *p)
{
	struct iovec iov = { .iov_base = p, .iov_len = PAGE_SZ };

	if (syscall(__NR_io_uring_register, rg->fd, IORING_REGISTER_BUFFERS,
		    &iov, 1))
		return -errno;
	return 0;
}

/* A page-sized file in mem_file_dir, already unlinked, opened @flags. */
static int scratch_file(int flags)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/thp_collapse_pin.XXXXXX",
		 mem_file_dir);
	fd = mkostemp(path, flags);
	if (fd < 0 || ftruncate(fd, PAGE_SZ))
		ksft_exit_fail_perror("scratch file");
	unlink(path);
	return fd;
}

/* A pin of page PIN_PG of a region, of either kind. */
struct pin {
	enum pin_kind kind;
	int gup_fd;		/* gup_test, PIN_GUP */
	struct ring rg;		/* PIN_URING */
	int file_fd;		/* PIN_URING: the file the buffer goes through */
	char *page;		/* the pinned page's address in the mapping */
};

/*
 * Pins page PIN_PG of @r as @kind. On the XFS file, first checks that GUP
 * refuses the writable long-term pins (gup_test's FOLL_WRITE one and the
 * io_uring registration) with EFAULT, then pins read-only. Ends the
 * program if a pin the test needs cannot be taken.
 */
static void pin_take(struct pin *pn, struct region *r, enum pin_kind kind)
{
	int ret;

	pn->kind = kind;
	pn->page = r->p + PIN_PG * PAGE_SZ;
	pn->gup_fd = -1;
	pn->file_fd = -1;
	if (kind == PIN_URING) {
		if (ring_init(&pn->rg))
			ksft_exit_fail_perror("io_uring_setup");
		ret = ring_register(&pn->rg, pn->page);
		if (ret)
			ksft_exit_fail_msg("%s: io_uring buffer registration: %s\n",
					   mem_type_name[r->type], strerror(-ret));
		pn->file_fd = scratch_file(0);
		return;
	}
	pn->gup_fd = open("/sys/kernel/debug/gup_test", O_RDWR);
	if (pn->gup_fd < 0)
		ksft_exit_fail_perror("/sys/kernel/debug/gup_test (CONFIG_GUP_TEST)");
	if (r->type == MEM_FILE) {
		struct ring rg;

		ret = gup_pin(pn->gup_fd, pn->page, true);
		if (ret != -EFAULT)
			ksft_exit_fail_msg("xfs: writable long-term gup_test pin: %s, not EFAULT\n",
					   ret ? strerror(-ret) : "taken");
		if (ring_init(&rg))
			ksft_exit_fail_perror("io_uring_setup");
		ret = ring_register(&rg, pn->page);
		ring_exit(&rg);
		if (ret != -EFAULT)
			ksft_exit_fail_msg("xfs: io_uring buffer registration: %s, not EFAULT\n",
					   ret ? strerror(-ret) : "taken");
	}
	ret = gup_pin(pn->gup_fd, pn->page, r->type != MEM_FILE);
	if (ret)
		ksft_exit_fail_msg("%s: long-term gup_test pin: %s\n",
				   mem_type_name[r->type], strerror(-ret));
}

/* Copies the pinned page, as the pin sees it, into @buf; 0 or -1. */
static int pin_read(struct pin *pn, char *buf)
{
	__u64 addr = (unsigned long)buf;

	if (pn->kind == PIN_GUP)
		return ioctl(pn->gup_fd, PIN_LONGTERM_TEST_READ, &addr) ? -1 : 0;
	if (ring_rw_fixed(&pn->rg, IORING_OP_WRITE_FIXED, pn->file_fd,
			  pn->page) != PAGE_SZ)
		return -1;
	return pread(pn->file_fd, buf, PAGE_SZ, 0) == PAGE_SZ ? 0 : -1;
}

/*
 * Writes @buf into the pinned page through the pin (io_uring only: the
 * buffer is filled by IORING_OP_READ_FIXED from a file); 0 or -1.
 */
static int pin_write(struct pin *pn, const char *buf)
{
	if (pwrite(pn->file_fd, buf, PAGE_SZ, 0) != PAGE_SZ)
		return -1;
	return ring_rw_fixed(&pn->rg, IORING_OP_READ_FIXED, pn->file_fd,
			     pn->page) == PAGE_SZ ? 0 : -1;
}

static void pin_release(struct pin *pn)
{
	if (pn->kind == PIN_GUP) {
		if (ioctl(pn->gup_fd, PIN_LONGTERM_TEST_STOP))
			ksft_exit_fail_perror("PIN_LONGTERM_TEST_STOP");
		close(pn->gup_fd);
		return;
	}
	if (syscall(__NR_io_uring_register, pn->rg.fd,
		    IORING_UNREGISTER_BUFFERS, NULL, 0))
		ksft_exit_fail_perror("IORING_UNREGISTER_BUFFERS");
	ring_exit(&pn->rg);
	close(pn->file_fd);
}

/*
 * Whether the pin and the mapping of @r still share page PIN_PG: a new
 * generation written through the mapping (and with pwrite(2) for shmem and
 * the file) must be seen through the pin, and, for io_uring, one written
 * through the pin must be seen through the mapping. Moves @shadow and
 * @gen along.
 */
static bool pin_coherent(struct pin *pn, struct region *r, uint64_t *shadow,
			 uint64_t *gen)
{
	char buf[PAGE_SZ];

	mem_fill(pn->page, PIN_PG, ++*gen);
	shadow[PIN_PG] = *gen;
	if (pin_read(pn, buf) || !mem_page_ok(buf, PIN_PG, *gen)) {
		ksft_print_msg("a write through the mapping is not seen through the pin\n");
		return false;
	}
	if (r->fd >= 0) {
		mem_fill(buf, PIN_PG, ++*gen);
		if (pwrite(r->fd, buf, PAGE_SZ, PIN_PG * PAGE_SZ) != PAGE_SZ)
			ksft_exit_fail_perror("pwrite");
		shadow[PIN_PG] = *gen;
		if (pin_read(pn, buf) || !mem_page_ok(buf, PIN_PG, *gen)) {
			ksft_print_msg("a pwrite() of the file is not seen through the pin\n");
			return false;
		}
	}
	if (pn->kind == PIN_URING) {
		mem_fill(buf, PIN_PG, ++*gen);
		shadow[PIN_PG] = *gen;
		if (pin_write(pn, buf))
			ksft_exit_fail_msg("IORING_OP_READ_FIXED failed\n");
		if (!mem_page_ok(pn->page, PIN_PG, *gen)) {
			ksft_print_msg("a write through the pin is not seen through the mapping\n");
			return false;
		}
	}
	return true;
}

/*
 * One long-term pin of @kind on page PIN_PG of a populated PMD of @type:
 * MADV_COLLAPSE on @core must refuse (EAGAIN, PTE-mapped, Rust: page_count
 * counted, no succeed) and pin and mapping must stay coherent; after the
 * unpin the collapse must succeed with every byte intact. Two results.
 */
static void test_pin(const char *core, enum mem_type type, enum pin_kind kind)
{
	bool rust = !strcmp(core, "rust"), coherent, huge;
	long long pc, ok, pc_d, ok_d;
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = mem_region(type, 1);
	uint64_t gen = 1;
	struct pin pn;
	char buf[PAGE_SZ];
	int ret, err;
	size_t bad;

	if (mem_populate(&r, shadow, gen))
		ksft_exit_fail_perror("populate");
	/* Clean file pages: the refusal must come from the pin. */
	if (type == MEM_FILE && fsync(r.fd))
		ksft_exit_fail_perror("fsync");
	pin_take(&pn, &r, kind);
	if (pin_read(&pn, buf) || !mem_page_ok(buf, PIN_PG, gen))
		ksft_exit_fail_msg("%s: the new pin does not read the page\n",
				   mem_type_name[type]);

	collapse_require_core(core);
	pc = rust_stat("madvise", "page_count");
	ok = rust_stat("madvise", "succeed");
	ret = madvise(r.p, r.len, MADV_COLLAPSE);
	err = errno;
	pc_d = rust_stat("madvise", "page_count") - pc;
	ok_d = rust_stat("madvise", "succeed") - ok;
	huge = mem_pmd_mapped(&r);
	coherent = pin_coherent(&pn, &r, shadow, &gen);
	bad = mem_bad_pages(&r, shadow);
	ksft_test_result(ret && err == EAGAIN && !huge && coherent && !bad &&
			 (!rust || (pc_d >= 1 && !ok_d)),
			 "%s: %s: long-term %s pin%s: MADV_COLLAPSE %s, %s, pin %s, %zu pages differ, rust page_count +%lld succeed +%lld\n",
			 core, mem_type_name[type], pin_name[kind],
			 type == MEM_FILE ? " (read-only)" : "",
			 ret ? strerror(err) : "collapsed",
			 huge ? "PMD-mapped" : "PTE-mapped",
			 coherent ? "coherent" : "INCOHERENT", bad, pc_d, ok_d);

	pin_release(&pn);
	if (type == MEM_FILE && fsync(r.fd))
		ksft_exit_fail_perror("fsync");
	ok = rust_stat("madvise", "succeed");
	ret = madvise(r.p, r.len, MADV_COLLAPSE);
	err = errno;
	ok_d = rust_stat("madvise", "succeed") - ok;
	huge = mem_pmd_mapped(&r);
	bad = mem_bad_pages(&r, shadow);
	ksft_test_result(!ret && huge && !bad && (!rust || ok_d == 1),
			 "%s: %s: after the %s unpin: MADV_COLLAPSE %s, %s, %zu pages differ, rust succeed +%lld\n",
			 core, mem_type_name[type], pin_name[kind],
			 ret ? strerror(err) : "ok",
			 huge ? "PMD-mapped" : "PTE-mapped", bad, ok_d);
	mem_region_free(&r);
}

/* The O_DIRECT source, written once: page i holds generation i + 2. */
static int dio_src = -1;

/* Seconds on the monotonic clock. */
static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Writes the O_DIRECT source in mem_file_dir: DIO_READS pages, page i
 * holding generation i + 2 of page i % PAGES_PER_PMD of a range, on disk,
 * then switches its descriptor to O_DIRECT.
 */
static void dio_source(void)
{
	char buf[PAGE_SZ];
	size_t i;

	dio_src = scratch_file(0);
	for (i = 0; i < DIO_READS; i++) {
		mem_fill(buf, i % PAGES_PER_PMD, i + 2);
		if (pwrite(dio_src, buf, PAGE_SZ, i * PAGE_SZ) != PAGE_SZ)
			ksft_exit_fail_perror("pwrite");
	}
	if (fsync(dio_src) || fcntl(dio_src, F_SETFL, O_DIRECT))
		ksft_exit_fail_perror("O_DIRECT source");
}

/* The O_DIRECT reader's state, shared with the main thread. */
struct dio {
	struct region *r;
	uint64_t *shadow;
	atomic_int stop;
	atomic_int collapsing;	/* the main thread is in MADV_COLLAPSE */
	atomic_long round_us;	/* the mean time of a round so far */
	unsigned long reads, overlaps, lost, errors;
	double read_s;		/* the time spent in the reads */
};

/*
 * The reader: read i puts generation i + 2 of page k = i % PAGES_PER_PMD
 * into page k of the range with an O_DIRECT read of the source (page k is
 * pinned for the I/O), and checks it through the mapping at once. Then it
 * pauses for half a round to one and a half rounds of the main thread (at
 * random), so that most rounds meet a read, at any point of the round, and
 * most rounds still collapse. (Reads back to back failed two thirds of the
 * shmem collapses on both cores with EAGAIN, as they should.)
 */
static void *dio_reader(void *arg)
{
	struct dio *d = arg;
	unsigned int seed = 1;
	double t, dt;
	size_t i, k;
	bool overlap;
	char *dst;

	for (i = 0; i < DIO_READS && !atomic_load(&d->stop); i++) {
		k = i % PAGES_PER_PMD;
		dst = d->r->p + k * PAGE_SZ;
		overlap = atomic_load(&d->collapsing);
		t = now();
		if (pread(dio_src, dst, PAGE_SZ, i * PAGE_SZ) != PAGE_SZ) {
			d->errors++;
			break;
		}
		dt = now() - t;
		d->overlaps += overlap || atomic_load(&d->collapsing);
		d->read_s += dt;
		d->shadow[k] = i + 2;
		d->reads++;
		if (!mem_page_ok(dst, k, i + 2))
			d->lost++;
		usleep(atomic_load(&d->round_us) *
		       (500 + rand_r(&seed) % 1000) / 1000);
	}
	return NULL;
}

/*
 * Splits @r until it is not PMD-mapped any more (a read's pin fails the
 * split too), SPLIT_TRIES times at most; whether it is still PMD-mapped.
 */
static bool split_range(struct region *r)
{
	int i;

	for (i = 0; i < SPLIT_TRIES; i++) {
		if (mem_split(r))
			ksft_exit_fail_perror("split_huge_pages");
		if (!mem_pmd_mapped(r))
			return false;
		usleep(5000);
	}
	return true;
}

/*
 * DIO_ROUNDS rounds of MADV_COLLAPSE and split of a PMD of @type on @core
 * while the O_DIRECT reader fills its pages: no read lost, every page with
 * its last generation, no errno but EAGAIN (a read's pin), reads during
 * collapses, and at least half of the rounds collapsed from base pages
 * (Rust: succeed moved as often; for shmem it also counts a range that
 * stayed PMD-mapped, as upstream does). On the Rust core, each anonymous
 * collapse was copied early (while the reads went on) or under the mmap
 * write lock, or mapped in place (a split that a read's pin stopped halfway
 * leaves the PMD-sized folio mapped by PTEs); shmem collapses take none of
 * these anonymous paths.
 */
static void test_dio(const char *core, enum mem_type type)
{
	bool rust = !strcmp(core, "rust"), huge = false, paths_ok;
	int collapsed = 0, refused = 0, other = 0, split_fail = 0, i, err = 0;
	static struct rust_stats first, last;
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = mem_region(type, 1);
	struct dio d = { .r = &r, .shadow = shadow };
	long long ok, pc, ok_d, pc_d;
	struct rust_paths paths;
	double t0, t;
	pthread_t th;
	size_t bad;
	int ret;

	if (mem_populate(&r, shadow, 1))
		ksft_exit_fail_perror("populate");
	collapse_require_core(core);
	/* A first round alone, for the reader's pace. */
	t = now();
	madvise(r.p, r.len, MADV_COLLAPSE);
	if (split_range(&r))
		ksft_exit_fail_msg("%s: the range does not split\n",
				   mem_type_name[type]);
	atomic_store(&d.round_us, (long)((now() - t) * 1e6));
	ok = rust_stat("madvise", "succeed");
	pc = rust_stat("madvise", "page_count");
	rust_stats_read("madvise", &first);
	if (pthread_create(&th, NULL, dio_reader, &d))
		ksft_exit_fail_msg("pthread_create\n");
	t0 = now();
	for (i = 0; i < DIO_ROUNDS; i++) {
		atomic_store(&d.collapsing, 1);
		ret = madvise(r.p, r.len, MADV_COLLAPSE);
		atomic_store(&d.collapsing, 0);
		if (!ret) {
			collapsed += !huge;
		} else if (errno == EAGAIN) {
			refused++;
		} else {
			other++;
			err = errno;
		}
		huge = split_range(&r);
		split_fail += huge;
		atomic_store(&d.round_us, (long)((now() - t0) * 1e6 / (i + 1)));
	}
	atomic_store(&d.stop, 1);
	pthread_join(th, NULL);
	rust_stats_read("madvise", &last);
	ok_d = rust_stat("madvise", "succeed") - ok;
	pc_d = rust_stat("madvise", "page_count") - pc;
	paths = rust_paths_delta(&first, &last);
	paths_ok = !rust || (type == MEM_ANON ?
			     paths.early + paths.locked + paths.in_place == ok_d :
			     !paths.early && !paths.locked && !paths.in_place);
	bad = mem_bad_pages(&r, shadow);
	ksft_test_result(!d.lost && !d.errors && !bad && !other && d.overlaps &&
			 2 * collapsed >= DIO_ROUNDS &&
			 (!rust || 2 * ok_d >= DIO_ROUNDS) && paths_ok,
			 "%s: %s: O_DIRECT reads during collapse and split: %d rounds, %d collapsed, %d EAGAIN, %d other (%s), %d splits failed, %lu reads (%.1f ms each, %lu during a collapse), %.0f ms a round, %lu lost, %lu errors, %zu pages differ, rust succeed +%lld page_count +%lld (copied early +%lld, %lld pages of them again; copied locked +%lld; in place +%lld)\n",
			 core, mem_type_name[type], DIO_ROUNDS, collapsed,
			 refused, other, other ? strerror(err) : "-",
			 split_fail, d.reads,
			 d.reads ? d.read_s * 1e3 / d.reads : 0.0, d.overlaps,
			 atomic_load(&d.round_us) / 1e3, d.lost, d.errors, bad, ok_d, pc_d,
			 paths.early, paths.recopied, paths.locked, paths.in_place);
	mem_region_free(&r);
}

/* Restores the core and THP "enabled" knobs, also on ksft_exit_fail_*(). */
static void restore_knobs(void)
{
	collapse_set_core(orig_core);
	set_str(THP_SYSFS "enabled", orig_enabled);
}

int main(int argc, char **argv)
{
	static const enum mem_type dio_types[] = { MEM_ANON, MEM_SHMEM };
	double t0 = now();
	unsigned int c, t;

	if (argc > 1)
		mem_file_dir = argv[1];
	collapse_test_start(orig_core, sizeof(orig_core), orig_enabled,
			    sizeof(orig_enabled));
	atexit(restore_knobs);
	ksft_set_plan(2 * (2 * 5 + 2));
	dio_source();

	for (c = 0; c < 2; c++) {
		for (t = MEM_ANON; t < NR_MEM_TYPES; t++) {
			test_pin(cores[c], t, PIN_GUP);
			if (t != MEM_FILE)
				test_pin(cores[c], t, PIN_URING);
		}
		for (t = 0; t < 2; t++)
			test_dio(cores[c], dio_types[t]);
	}

	ksft_print_msg("%.1f s in all\n", now() - t0);
	ksft_finished();
}
