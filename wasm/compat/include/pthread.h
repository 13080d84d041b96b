/*
 * Single-threaded pthread.h for wasm32-wasi (Debian's wasi-libc ships none).
 * ggml-cpu includes it for its thread pool, which the guest never starts: ggml forces
 * n_threads = 1 under __wasi__. Creating a thread fails cleanly; locks are no-ops.
 */
#ifndef WASILLAMA_COMPAT_PTHREAD_H
#define WASILLAMA_COMPAT_PTHREAD_H
#include <errno.h>
#include <sched.h>

/* wasi-libc's musl headers already define the pthread types; reuse them. */
#define __NEED_pthread_t
#define __NEED_pthread_attr_t
#define __NEED_pthread_mutex_t
#define __NEED_pthread_mutexattr_t
#define __NEED_pthread_cond_t
#define __NEED_pthread_condattr_t
#include <bits/alltypes.h>

#ifndef SCHED_OTHER
struct sched_param { int sched_priority; };
#define SCHED_OTHER 0
#define SCHED_FIFO 1
#define SCHED_RR 2
#endif

#define PTHREAD_MUTEX_INITIALIZER {{{0}}}
#define PTHREAD_COND_INITIALIZER {{{0}}}

static inline pthread_t pthread_self(void) { return (pthread_t) 0; }
static inline int pthread_create(pthread_t * t, const pthread_attr_t * a, void * (*f)(void *), void * arg) {
    (void) t; (void) a; (void) f; (void) arg;
    return EAGAIN;
}
static inline int pthread_join(pthread_t t, void ** ret) { (void) t; (void) ret; return 0; }
static inline int pthread_mutex_init(pthread_mutex_t * m, const pthread_mutexattr_t * a) { (void) m; (void) a; return 0; }
static inline int pthread_mutex_destroy(pthread_mutex_t * m) { (void) m; return 0; }
static inline int pthread_mutex_lock(pthread_mutex_t * m) { (void) m; return 0; }
static inline int pthread_mutex_trylock(pthread_mutex_t * m) { (void) m; return 0; }
static inline int pthread_mutex_unlock(pthread_mutex_t * m) { (void) m; return 0; }
static inline int pthread_cond_init(pthread_cond_t * c, const pthread_condattr_t * a) { (void) c; (void) a; return 0; }
static inline int pthread_cond_destroy(pthread_cond_t * c) { (void) c; return 0; }
static inline int pthread_cond_wait(pthread_cond_t * c, pthread_mutex_t * m) { (void) c; (void) m; return 0; }
static inline int pthread_cond_signal(pthread_cond_t * c) { (void) c; return 0; }
static inline int pthread_cond_broadcast(pthread_cond_t * c) { (void) c; return 0; }
static inline int pthread_setschedparam(pthread_t t, int p, const struct sched_param * s) { (void) t; (void) p; (void) s; return ENOSYS; }
#endif
