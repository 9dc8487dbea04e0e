// SPDX-License-Identifier: GPL-2.0
/*
 * C glue of the Rust THP collapse core (mm/thp_collapse.rs): the run-time
 * selection between the C and Rust implementations, the sysfs files that
 * show the Rust core's counters, and the batched reader of PTE facts
 * (thp_collapse_read_ptes()) that the Rust scan and isolation share.
 *
 * /sys/kernel/mm/transparent_hugepage/collapse/
 *	core			"[rust] c" or "rust [c]"; write "rust" or "c"
 *	rust_stats/madvise	one "<outcome> <count>" line per outcome
 *	rust_stats/process_madvise
 *	rust_stats/khugepaged
 */
#define pr_fmt(fmt) "thp_collapse: " fmt

#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/init.h>
#include <linux/jump_label.h>
#include <linux/kobject.h>
#include <linux/mm.h>
#include <linux/mm_inline.h>
#include <linux/pagemap.h>
#include <linux/sched/signal.h>
#include <linux/string.h>
#include <linux/swap.h>
#include <linux/sysfs.h>
#include <linux/wait_bit.h>

#include <asm/tlb.h>

#include "internal.h"
#include "khugepaged_internal.h"

DEFINE_STATIC_KEY_TRUE(thp_collapse_rust_key);

/* Choice made on the command line, applied when sysfs comes up. */
static bool thp_collapse_boot_rust __initdata = true;

static int __init setup_thp_collapse_core(char *str)
{
	if (!strcmp(str, "rust"))
		thp_collapse_boot_rust = true;
	else if (!strcmp(str, "c"))
		thp_collapse_boot_rust = false;
	else
		pr_warn("thp_collapse_core=%s ignored: use 'rust' or 'c'\n",
			str);
	return 1;
}
__setup("thp_collapse_core=", setup_thp_collapse_core);

static ssize_t core_show(struct kobject *kobj, struct kobj_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, thp_collapse_use_rust() ? "[rust] c\n" :
							 "rust [c]\n");
}

static ssize_t core_store(struct kobject *kobj, struct kobj_attribute *attr,
			  const char *buf, size_t count)
{
	if (sysfs_streq(buf, "rust"))
		static_branch_enable(&thp_collapse_rust_key);
	else if (sysfs_streq(buf, "c"))
		static_branch_disable(&thp_collapse_rust_key);
	else
		return -EINVAL;
	return count;
}

static struct kobj_attribute core_attr = __ATTR_RW(core);

/* See thp_collapse_switch_mode(). */
static int thp_collapse_switch_cur __read_mostly = THP_COLLAPSE_SWITCH_READ;

static const char * const thp_collapse_switch_names[] = {
	[THP_COLLAPSE_SWITCH_VMA] = "vma",
	[THP_COLLAPSE_SWITCH_PTL] = "ptl",
	[THP_COLLAPSE_SWITCH_READ] = "read",
};

/**
 * thp_collapse_switch_mode() - how the Rust core switches an anonymous range.
 *
 * Return: THP_COLLAPSE_SWITCH_READ (rust_switch is "read", the default) if a
 * collapse whose early copy holds switches the range under its page-table
 * locks with the mmap lock held for read only, letting the VMA's page faults
 * and the process's mmap-lock readers go on; THP_COLLAPSE_SWITCH_PTL ("ptl")
 * if it does so with the mmap lock held for write; THP_COLLAPSE_SWITCH_VMA
 * ("vma") if it write-locks the VMA for the switch, as upstream does.
 */
int thp_collapse_switch_mode(void)
{
	return READ_ONCE(thp_collapse_switch_cur);
}

static ssize_t rust_switch_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	int cur = thp_collapse_switch_mode();
	int len = 0;
	int i;

	/* From the least to the most concurrent, the current one in brackets. */
	for (i = 0; i < ARRAY_SIZE(thp_collapse_switch_names); i++)
		len += sysfs_emit_at(buf, len, i == cur ? "%s[%s]" : "%s%s",
				     i ? " " : "", thp_collapse_switch_names[i]);
	len += sysfs_emit_at(buf, len, "\n");
	return len;
}

static ssize_t rust_switch_store(struct kobject *kobj,
				 struct kobj_attribute *attr, const char *buf,
				 size_t count)
{
	int mode = sysfs_match_string(thp_collapse_switch_names, buf);

	if (mode < 0)
		return -EINVAL;
	WRITE_ONCE(thp_collapse_switch_cur, mode);
	return count;
}

static struct kobj_attribute rust_switch_attr = __ATTR_RW(rust_switch);

#ifdef CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST
/* debugfs thp_collapse_switch_delay_us; see thp_collapse_switch_test_delay(). */
static u32 thp_collapse_switch_delay_us;

/**
 * thp_collapse_switch_test_delay() - a testing hook: widen the switch under
 * the page-table locks.
 *
 * Spins for debugfs's thp_collapse_switch_delay_us (at most 10 ms) inside the
 * switch, the range's entries taken out and the page-table locks held, so
 * that the selftests' racers under the VMA lock (faults, MADV_DONTNEED,
 * UFFDIO_MOVE) land in it. Test kernels only (the KUnit option); 0, the
 * default, adds nothing.
 */
void thp_collapse_switch_test_delay(void)
{
	u32 us = READ_ONCE(thp_collapse_switch_delay_us);

	if (us)
		udelay(min(us, 10000U));
}

/*
 * debugfs thp_collapse_early_pause_tid, thp_collapse_early_pause_at,
 * thp_collapse_early_resume and thp_collapse_early_paused; see
 * thp_collapse_early_test_pause().
 */
static u32 thp_collapse_early_pause_tid;
static u32 thp_collapse_early_pause_at;
static u32 thp_collapse_early_resume;
static atomic_t thp_collapse_early_paused = ATOMIC_INIT(0);

/* How long a paused early copy waits for its selftest at most. */
#define THP_EARLY_PAUSE_MAX_MS 10000

/**
 * thp_collapse_early_test_pause() - a testing hook: pause an early copy.
 * @at: THP_EARLY_PAUSE_BEFORE, THP_EARLY_PAUSE_AFTER or THP_EARLY_PAUSE_DONE,
 *	where the copy is.
 *
 * If debugfs's thp_collapse_early_pause_tid is the calling thread's id, as
 * it sees it (gettid(), in its own pid namespace), and
 * thp_collapse_early_pause_at has @at set, counts the pause in
 * thp_collapse_early_paused (making it N) and sleeps until
 * thp_collapse_early_resume reaches N, 10 s at most, or a fatal signal: a
 * selftest's thread changes the range meanwhile, at a point of the copy that
 * it could otherwise only hit by chance (a page faulted into another CPU's
 * LRU batch after the first pass, say). Sleeps with the mmap lock held for
 * read after a first pass, with no lock held at the other two points. Test
 * kernels only (the KUnit option); a tid of 0, the default, pauses nothing.
 */
void thp_collapse_early_test_pause(unsigned int at)
{
	unsigned long end;
	u32 seq;

	if (READ_ONCE(thp_collapse_early_pause_tid) != task_pid_vnr(current) ||
	    !(READ_ONCE(thp_collapse_early_pause_at) & at))
		return;
	seq = atomic_inc_return(&thp_collapse_early_paused);
	end = jiffies + msecs_to_jiffies(THP_EARLY_PAUSE_MAX_MS);
	while ((s32)(READ_ONCE(thp_collapse_early_resume) - seq) < 0 &&
	       time_before(jiffies, end) && !fatal_signal_pending(current))
		usleep_range(500, 1000);
}

static void __init thp_collapse_debugfs_init(void)
{
	debugfs_create_u32("thp_collapse_switch_delay_us", 0600, NULL,
			   &thp_collapse_switch_delay_us);
	debugfs_create_u32("thp_collapse_early_pause_tid", 0600, NULL,
			   &thp_collapse_early_pause_tid);
	debugfs_create_u32("thp_collapse_early_pause_at", 0600, NULL,
			   &thp_collapse_early_pause_at);
	debugfs_create_u32("thp_collapse_early_resume", 0600, NULL,
			   &thp_collapse_early_resume);
	debugfs_create_atomic_t("thp_collapse_early_paused", 0400, NULL,
				&thp_collapse_early_paused);
}
#else
void thp_collapse_switch_test_delay(void)
{
}

void thp_collapse_early_test_pause(unsigned int at)
{
}

static void __init thp_collapse_debugfs_init(void)
{
}
#endif

static struct attribute *collapse_attrs[] = {
	&core_attr.attr,
	&rust_switch_attr.attr,
	NULL,
};

static const struct attribute_group collapse_attr_group = {
	.attrs = collapse_attrs,
};

#define RUST_STATS_ATTR(_name, _caller)					\
static ssize_t _name##_show(struct kobject *kobj,			\
			    struct kobj_attribute *attr, char *buf)	\
{									\
	return thp_collapse_rust_stats_show(_caller, buf);		\
}									\
static struct kobj_attribute _name##_stats_attr = __ATTR_RO(_name)

RUST_STATS_ATTR(madvise, COLLAPSE_CALLER_MADVISE);
RUST_STATS_ATTR(process_madvise, COLLAPSE_CALLER_PROCESS_MADVISE);
RUST_STATS_ATTR(khugepaged, COLLAPSE_CALLER_KHUGEPAGED);

static struct attribute *rust_stats_attrs[] = {
	&madvise_stats_attr.attr,
	&process_madvise_stats_attr.attr,
	&khugepaged_stats_attr.attr,
	NULL,
};

static const struct attribute_group rust_stats_attr_group = {
	.name = "rust_stats",
	.attrs = rust_stats_attrs,
};

static const struct attribute_group *collapse_attr_groups[] = {
	&collapse_attr_group,
	&rust_stats_attr_group,
	NULL,
};

/**
 * thp_collapse_sysfs_init() - create transparent_hugepage/collapse/.
 * @hugepage_kobj: the /sys/kernel/mm/transparent_hugepage kobject.
 *
 * Also applies the thp_collapse_core= boot choice.
 *
 * Return: 0 on success, a negative errno otherwise.
 */
int __init thp_collapse_sysfs_init(struct kobject *hugepage_kobj)
{
	struct kobject *kobj;
	int err;

	if (!thp_collapse_boot_rust)
		static_branch_disable(&thp_collapse_rust_key);

	kobj = kobject_create_and_add("collapse", hugepage_kobj);
	if (!kobj)
		return -ENOMEM;
	err = sysfs_create_groups(kobj, collapse_attr_groups);
	if (err)
		kobject_put(kobj);
	else
		thp_collapse_debugfs_init();
	return err;
}

/* The facts of struct thp_collapse_pte that are the folio's, not the PTE's. */
#define THP_FOLIO_FACTS							\
	(THP_FOLIO_ANON | THP_FOLIO_LAZYFREE | THP_FOLIO_SHARED |	\
	 THP_FOLIO_LRU | THP_FOLIO_LOCKED | THP_FOLIO_EXTRA_REFS |	\
	 THP_FOLIO_LARGE | THP_FOLIO_YOUNG)

/*
 * Reads one PTE of a collapse candidate: what it maps, and the predicates of
 * the PTE and its folio. @last is the fact of an earlier PTE of the same read
 * that mapped a folio, or NULL: if this one maps the same folio (the pages of
 * a PTE-mapped large folio), its folio facts are taken from there instead of
 * read again for each PTE (once per read, a batch of PTEs, instead of 512
 * times for a PMD-sized folio). Only reads: the Rust core decides what the
 * facts mean.
 */
static __always_inline void read_pte(struct vm_area_struct *vma,
				     unsigned long addr, pte_t *ptep,
				     unsigned int what,
				     const struct thp_collapse_pte *last,
				     struct thp_collapse_pte *out)
{
	bool state = what & THP_READ_FOLIO_STATE;
	bool heuristics = what & THP_READ_HEURISTICS;
	pte_t pte = ptep_get(ptep);
	unsigned int flags = 0;
	struct folio *folio;
	struct page *page;

	out->page = NULL;
	out->folio = NULL;
	out->order = 0;
	out->nid = NUMA_NO_NODE;
	if (pte_none(pte)) {
		flags = THP_PTE_NONE_OR_ZERO | THP_PTE_NONE;
		goto out;
	}
	if (!pte_present(pte)) {
		flags = THP_PTE_NON_PRESENT |
			(pte_swp_uffd_any(pte) ? THP_PTE_SWP_UFFD : 0);
		goto out;
	}
	if (is_zero_pfn(pte_pfn(pte))) {
		flags = THP_PTE_NONE_OR_ZERO;
		goto out;
	}
	if (pte_uffd(pte))
		flags |= THP_PTE_UFFD_WP;
	if (pte_write(pte))
		flags |= THP_PTE_WRITE;
	if (heuristics && pte_dirty(pte))
		flags |= THP_PTE_DIRTY;
	if (heuristics && pte_young(pte))
		flags |= THP_PTE_YOUNG;
	page = vm_normal_page(vma, addr, pte);
	if (!page || is_zone_device_page(page))
		goto out;
	folio = page_folio(page);
	out->page = page;
	out->folio = folio;
	if (last && last->folio == folio) {
		out->order = last->order;
		out->nid = last->nid;
		flags |= last->flags & THP_FOLIO_FACTS;
		goto out;
	}
	out->order = folio_order(folio);
	out->nid = folio_nid(folio);
	if (folio_test_anon(folio))
		flags |= THP_FOLIO_ANON;
	if (heuristics && folio_test_lazyfree(folio))
		flags |= THP_FOLIO_LAZYFREE;
	if (folio_maybe_mapped_shared(folio))
		flags |= THP_FOLIO_SHARED;
	if (state && folio_test_lru(folio))
		flags |= THP_FOLIO_LRU;
	if (state && folio_test_locked(folio))
		flags |= THP_FOLIO_LOCKED;
	if (state && folio_expected_ref_count(folio) != folio_ref_count(folio))
		flags |= THP_FOLIO_EXTRA_REFS;
	if (folio_test_large(folio))
		flags |= THP_FOLIO_LARGE;
	if (heuristics && (folio_test_young(folio) || folio_test_referenced(folio)))
		flags |= THP_FOLIO_YOUNG;
out:
	out->flags = flags;
}

/**
 * thp_collapse_read_ptes() - read consecutive PTEs of a collapse candidate,
 * for Rust.
 * @vma: the VMA; its mm's mmap lock is held.
 * @addr: the address @ptep maps.
 * @ptep: the first PTE; its page table is locked or detached.
 * @nr: how many PTEs to read at most, from @ptep on, in the same page table.
 * @what: THP_READ_* flags. THP_READ_FOLIO_STATE reads THP_FOLIO_LRU,
 *	THP_FOLIO_LOCKED and THP_FOLIO_EXTRA_REFS, which only the scan needs:
 *	the isolation gets the same answers from folio_trylock(), the reference
 *	check under the lock and folio_isolate_lru()
 *	(thp_collapse_folio_isolate()). THP_READ_HEURISTICS reads the young,
 *	referenced, lazyfree and dirty facts that only khugepaged's heuristics
 *	look at (MADV_COLLAPSE ignores them). THP_READ_RUNS writes one fact for
 *	a run of PTEs mapping a large folio (folio_pte_batch_flags(), the PTEs'
 *	pte_write() respected), unless THP_READ_HEURISTICS is set too.
 * @out: where the facts go, one per PTE, or with THP_READ_RUNS one per run.
 * @nr_out: how many facts @out has room for.
 *
 * Only reads: the Rust core decides what the facts mean. The static inline
 * predicates of a PTE and its folio would each be an out-of-line rust_helper_*
 * call, a dozen per PTE, and even one call per PTE costs 512 per PMD and
 * phase: the core reads its PTEs a batch at a time, and the PTEs of a
 * PTE-mapped large folio a run at a time.
 *
 * Return: how many PTEs the facts written stand for (the sum of their @run).
 */
unsigned int thp_collapse_read_ptes(struct vm_area_struct *vma,
				    unsigned long addr, pte_t *ptep,
				    unsigned int nr, unsigned int what,
				    struct thp_collapse_pte *out,
				    unsigned int nr_out)
{
	const struct thp_collapse_pte *last = NULL;
	unsigned int i = 0, k;
	/*
	 * The PTEs of a run have the same pte_write(): the same RW bit, and on
	 * a shadow stack (where pte_write() is RW clear and Dirty set) the same
	 * Dirty bit, which the batch ignores elsewhere.
	 */
	fpb_t fpb = FPB_RESPECT_WRITE |
		    (vma->vm_flags & VM_SHADOW_STACK ? FPB_RESPECT_DIRTY : 0);

	if ((what & (THP_READ_RUNS | THP_READ_HEURISTICS)) != THP_READ_RUNS) {
		/* A fact per PTE: the tight loop of the scan's hottest path. */
		nr = min(nr, nr_out);
		for (i = 0; i < nr; i++) {
			read_pte(vma, addr + i * PAGE_SIZE, ptep + i, what, last,
				 out + i);
			out[i].run = 1;
			if (out[i].folio)
				last = out + i;
		}
		return nr;
	}
	for (k = 0; k < nr_out && i < nr; k++) {
		struct thp_collapse_pte *fact = out + k;
		unsigned int run = 1;

		read_pte(vma, addr + i * PAGE_SIZE, ptep + i, what, last, fact);
		if (fact->folio)
			last = fact;
		if ((fact->flags & THP_FOLIO_LARGE) && i + 1 < nr) {
			pte_t pte = ptep_get(ptep + i);

			run = folio_pte_batch_flags(fact->folio, NULL, ptep + i,
						    &pte, nr - i, fpb);
		}
		fact->run = run;
		i += run;
	}
	return i;
}

/**
 * thp_collapse_ptes_writable() - which PTEs of a run are present and writable,
 * for Rust.
 * @ptep: the first PTE of the run; its page table is locked.
 * @first: the index of @ptep in its page table.
 * @nr: how many PTEs, from @ptep on, in the same page table.
 * @writable: a bitmap of the table's PTEs; the bit of each PTE of the run
 *	that is present and writable is set, the others are left as they are.
 *
 * The early copy's look before a retry (mm/thp_collapse/anon/early.rs): was a
 * page of the copy written since? As thp_collapse_read_ptes(), one call for
 * the run instead of three rust_helper_* calls per PTE.
 */
void thp_collapse_ptes_writable(pte_t *ptep, unsigned int first,
				unsigned int nr, unsigned long *writable)
{
	unsigned int i;

	for (i = 0; i < nr; i++) {
		pte_t pte = ptep_get(ptep + i);

		if (pte_present(pte) && pte_write(pte))
			__set_bit(first + i, writable);
	}
}

/**
 * thp_collapse_remove_rmap_small() - remove the mapping of a small anonymous
 * folio that a collapse unmapped, for Rust.
 * @folio: the folio, isolated and locked; the PTE that mapped it is cleared.
 * @vma: the VMA of that PTE; the caller holds its mmap lock (for read at
 *	least) since the PTE was cleared, so that the VMA and its flags stay.
 *
 * folio_remove_rmap_pte() updates per-CPU statistics, which zaps do under the
 * PTE lock; here preemption is off instead. A collapse calls it under the
 * mmap read lock (after mmap_write_downgrade(), or under the read lock it
 * switched under), once the new PMD is in place: the old folio is
 * off the LRU, locked and mapped by no page table, so that no rmap walker
 * finds it mapped meanwhile, and reclaim, migration and compaction do not
 * take it.
 */
void thp_collapse_remove_rmap_small(struct folio *folio,
				    struct vm_area_struct *vma)
{
	preempt_disable();
	folio_remove_rmap_pte(folio, folio_page(folio, 0), vma);
	preempt_enable();
}

/**
 * thp_collapse_wait_claim() - wait for a collapse to give up its claim on a
 * range, for Rust.
 * @slot: the slot that held @claim (mm/thp_collapse/anon/claim.rs).
 * @claim: the claim: the range's mm and address, as one word.
 * @timeout: how long to wait at most, in jiffies.
 *
 * Context: process context, no lock held. Sleeps.
 * Return: 0 if @slot still held @claim after @timeout, else the jiffies left.
 */
long thp_collapse_wait_claim(unsigned long *slot, unsigned long claim,
			     long timeout)
{
	return wait_var_event_timeout(slot, READ_ONCE(*slot) != claim, timeout);
}

/**
 * thp_collapse_drop_claim() - give up a collapse's claim on a range and wake
 * whoever waits for it, for Rust.
 * @slot: the slot that holds the claim; it is free on return.
 */
void thp_collapse_drop_claim(unsigned long *slot)
{
	store_release_wake_up(slot, 0);
}
