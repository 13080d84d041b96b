/*
 * pthread.h for wasm32-wasi: the pinned Debian wasi-libc ships none. Declares the subset that
 * wasm/runtime/threads.c implements over wasi-threads (what ggml's thread pool uses).
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

#ifdef __cplusplus
extern "C" {
#endif

#ifndef SCHED_OTHER
struct sched_param { int sched_priority; };
#define SCHED_OTHER 0
#define SCHED_FIFO 1
#define SCHED_RR 2
#endif

#define PTHREAD_MUTEX_INITIALIZER {{{0}}}
#define PTHREAD_COND_INITIALIZER {{{0}}}

int pthread_create(pthread_t * thread, const pthread_attr_t * attr, void * (*fn)(void *), void * arg);
int pthread_join(pthread_t thread, void ** result);
pthread_t pthread_self(void);
int pthread_equal(pthread_t a, pthread_t b);
int pthread_mutex_init(pthread_mutex_t * m, const pthread_mutexattr_t * attr);
int pthread_mutex_destroy(pthread_mutex_t * m);
int pthread_mutex_lock(pthread_mutex_t * m);
int pthread_mutex_trylock(pthread_mutex_t * m);
int pthread_mutex_unlock(pthread_mutex_t * m);
int pthread_cond_init(pthread_cond_t * c, const pthread_condattr_t * attr);
int pthread_cond_destroy(pthread_cond_t * c);
int pthread_cond_wait(pthread_cond_t * c, pthread_mutex_t * m);
int pthread_cond_signal(pthread_cond_t * c);
int pthread_cond_broadcast(pthread_cond_t * c);
int pthread_setschedparam(pthread_t thread, int policy, const struct sched_param * param);

#ifdef __cplusplus
}
#endif
#endif
