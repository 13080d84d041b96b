// POSIX threads for the guest, over wasi-threads' host spawn (what ggml's thread pool needs).
//
// wasi-libc's own pthreads need a newer wasi-libc than the pinned Debian one (whose posix thread
// model has no pthread_create), so this is the small subset ggml uses: create/join, futex
// mutexes and condition variables (memory.atomic.wait32/notify on the shared memory), self.
//
// A thread is one more instance of this module on the host, importing the same shared memory:
// pthread_create allocates the thread's stack and TLS block here, asks the host to start an
// instance (`wasi.thread-spawn`), and the host calls `wasi_thread_start(tid, arg)` on it
// (thread_start.S sets the stack pointer and TLS, then calls wl_thread_main).
//
// Containment: a trap ends only the thread that trapped; a peer may be waiting for it forever
// (at a ggml barrier, on a lock). So every wait here is bounded and every spin of ggml's pool
// calls ggml_wasi_thread_relax (wasm/patches/0006): both check `doom`, which the host sets when
// any thread of the sandbox traps or when it closes, and then trap too. No thread outlives its
// sandbox, and none can keep the host waiting. ggml's barrier spins a little, then sleeps here
// (ggml_wasi_thread_wait): a host's cores are shared, and a spinning thread would take the core
// of the very thread it waits for.
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STACK_SIZE (2u << 20)       // a worker's stack (ggml's kernels keep big buffers on the heap)
#define WAIT_SLICE_NS 50000000ll    // longest single wait: how soon a doomed thread notices

__attribute__((import_module("wasi"), import_name("thread-spawn"))) int32_t wl_host_thread_spawn(int32_t arg);
extern void __wasm_init_tls(void * block);

// set by the host (at wl_threads_doom()'s address): every thread of the sandbox must stop now
static volatile int32_t doom;

__attribute__((export_name("wl_threads_doom"), used)) uint32_t wl_threads_doom(void) {
    return (uint32_t) (uintptr_t) &doom;
}

static inline void check_doom(void) {
    if (__atomic_load_n(&doom, __ATOMIC_RELAXED)) __builtin_trap();
}


// Wait while *addr == expected, for one slice at most (callers loop; spurious returns are fine).
static void wait_slice(volatile int32_t * addr, int32_t expected) {
    check_doom();
    __builtin_wasm_memory_atomic_wait32((int32_t *) addr, expected, WAIT_SLICE_NS);
    check_doom();
}

static void wake(volatile int32_t * addr, uint32_t n) { __builtin_wasm_memory_atomic_notify((int32_t *) addr, n); }

// ggml's hooks (wasm/patches/0006)
void ggml_wasi_thread_relax(void) { check_doom(); }
void ggml_wasi_thread_wait(volatile int32_t * addr, int32_t value) { wait_slice(addr, value); }
void ggml_wasi_thread_wake(volatile int32_t * addr) { wake(addr, UINT32_MAX); }

// ---- threads -----------------------------------------------------------------------------------

// The start argument. thread_start.S reads stack_top and tls_base at offsets 0 and 4.
struct wl_thread {
    uint32_t stack_top;
    uint32_t tls_base;
    void * (*fn)(void *);
    void * arg;
    void * result;
    volatile int32_t done;  // futex word: set when fn has returned
    void * block;           // the allocation holding stack, TLS and this struct
};

static _Thread_local struct wl_thread * self;
static struct wl_thread main_thread;

void wl_thread_main(int32_t tid, struct wl_thread * t) {
    (void) tid;
    self = t;
    t->result = t->fn(t->arg);
    __atomic_store_n(&t->done, 1, __ATOMIC_SEQ_CST);
    wake(&t->done, 1);
    // nothing here touches the stack or the struct again: the joiner may free them now
}

int pthread_create(pthread_t * out, const pthread_attr_t * attr, void * (*fn)(void *), void * arg) {
    (void) attr;
    const size_t tls_align = __builtin_wasm_tls_align() > 16 ? __builtin_wasm_tls_align() : 16;
    const size_t tls_size = (__builtin_wasm_tls_size() + tls_align - 1) & ~(tls_align - 1);
    const size_t size = STACK_SIZE + tls_size + sizeof(struct wl_thread);
    char * block = aligned_alloc(tls_align, (size + tls_align - 1) & ~(tls_align - 1));
    if (!block) return EAGAIN;
    struct wl_thread * t = (struct wl_thread *) (block + STACK_SIZE + tls_size);
    memset(t, 0, sizeof *t);
    t->stack_top = (uint32_t) (uintptr_t) (block + STACK_SIZE);  // the stack grows down from here
    t->tls_base = (uint32_t) (uintptr_t) (block + STACK_SIZE);
    t->fn = fn;
    t->arg = arg;
    t->block = block;
    if (wl_host_thread_spawn((int32_t) (uintptr_t) t) < 0) {
        free(block);
        return EAGAIN;
    }
    *out = (pthread_t) t;
    return 0;
}

int pthread_join(pthread_t thread, void ** result) {
    struct wl_thread * t = (struct wl_thread *) thread;
    while (!__atomic_load_n(&t->done, __ATOMIC_SEQ_CST)) wait_slice(&t->done, 0);
    if (result) *result = t->result;
    free(t->block);
    return 0;
}

pthread_t pthread_self(void) { return (pthread_t) (self ? self : &main_thread); }

int pthread_equal(pthread_t a, pthread_t b) { return a == b; }

// ---- mutexes: 0 free, 1 locked, 2 locked with waiters (Drepper, "Futexes are tricky") --------

static volatile int32_t * mutex_word(pthread_mutex_t * m) { return &m->__u.__vi[0]; }

int pthread_mutex_init(pthread_mutex_t * m, const pthread_mutexattr_t * attr) {
    (void) attr;
    memset(m, 0, sizeof *m);
    return 0;
}

int pthread_mutex_destroy(pthread_mutex_t * m) { (void) m; return 0; }

int pthread_mutex_trylock(pthread_mutex_t * m) {
    int32_t expected = 0;
    return __atomic_compare_exchange_n(mutex_word(m), &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED) ? 0 : EBUSY;
}

static void lock_contended(volatile int32_t * w) {
    while (__atomic_exchange_n(w, 2, __ATOMIC_ACQUIRE) != 0) wait_slice(w, 2);
}

int pthread_mutex_lock(pthread_mutex_t * m) {
    volatile int32_t * w = mutex_word(m);
    int32_t expected = 0;
    if (!__atomic_compare_exchange_n(w, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) lock_contended(w);
    return 0;
}

int pthread_mutex_unlock(pthread_mutex_t * m) {
    volatile int32_t * w = mutex_word(m);
    if (__atomic_fetch_sub(w, 1, __ATOMIC_RELEASE) != 1) {
        __atomic_store_n(w, 0, __ATOMIC_RELEASE);
        wake(w, 1);
    }
    return 0;
}

// ---- condition variables: a sequence number that every signal bumps ---------------------------

static volatile int32_t * cond_word(pthread_cond_t * c) { return &c->__u.__vi[0]; }

int pthread_cond_init(pthread_cond_t * c, const pthread_condattr_t * attr) {
    (void) attr;
    memset(c, 0, sizeof *c);
    return 0;
}

int pthread_cond_destroy(pthread_cond_t * c) { (void) c; return 0; }

int pthread_cond_wait(pthread_cond_t * c, pthread_mutex_t * m) {
    volatile int32_t * seq = cond_word(c);
    const int32_t seen = __atomic_load_n(seq, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(m);
    wait_slice(seq, seen);          // a spurious wake-up is allowed: callers re-check their predicate
    lock_contended(mutex_word(m));  // as contended: a waiter may have queued behind us meanwhile
    return 0;
}

static void cond_bump(pthread_cond_t * c, uint32_t n) {
    __atomic_fetch_add(cond_word(c), 1, __ATOMIC_SEQ_CST);
    wake(cond_word(c), n);
}

int pthread_cond_signal(pthread_cond_t * c) { cond_bump(c, 1); return 0; }
int pthread_cond_broadcast(pthread_cond_t * c) { cond_bump(c, UINT32_MAX); return 0; }

int pthread_setschedparam(pthread_t t, int policy, const struct sched_param * param) {
    (void) t; (void) policy; (void) param;
    return ENOSYS;  // the host schedules the threads
}
